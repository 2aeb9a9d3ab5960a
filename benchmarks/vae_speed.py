"""Training speed of the VAE: `dl4 fit` against a plain PyTorch loop of the same model, and against the
pytorch/examples VAE recipe (torchvision DataLoader, per-sample ToTensor), all at 784-400-20 (ReLU), batch 128.

    python benchmarks/vae_speed.py [--epochs 2] [--rounds 3] [--accelerator cpu|gpu]

The variants: the plain loop (the model's -ELBO, ``backward``, fused Adam, on the batches of dl4's MNIST loader);
Lightning's loop alone (the same LightningModule and datamodule, no logger, bar, checkpoints or callbacks); `dl4
fit --config configs/vae_mnist.yaml` at this model size, built by dl4's CLI with everything that command runs
(the W&B logger offline and dl4's metrics file, the progress bar, the config's checkpoints and picture callbacks,
dl4's fault callbacks), on grey-level images as the others see them (``binarize: none``); and the recipe. Each
round runs every variant in turn for ``--epochs`` epochs (interleaved, so that a noisy machine hurts all alike).
An epoch is timed from its start to the next one's (or the run's end): its checkpoint writes count, validation
is off. The table reports training images per second, the best epoch (the machine's speed when nothing else
runs) and the median epoch over all rounds.
"""

import argparse
import statistics
import time

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from common import REPO, build_run, default_data_dir, report
from datamodules import MNISTDataModule
from dl4.cli import configure_runtime
from lightning_models import VAE
from lightning_models.nn.autoencoders import mirrored_mlps
from lightning_models.optim import fused_adam


def vae():
    """The pytorch/examples VAE's size: 784-400-20 (ReLU), Bernoulli likelihood."""
    return VAE(*mirrored_mlps((400,), 20, "relu", encoder_outputs=2), likelihood="bernoulli")


class EpochTimer(L.Callback):
    """Images per second of each epoch, timed from its start to the next one's start, or to the end of training:
    its epoch-end work (the checkpoints written) included."""

    def __init__(self):
        self.rates, self.start, self.images = [], None, 0

    def lap(self, pl_module):
        sync(pl_module.device)
        now = time.perf_counter()
        if self.start is not None:
            self.rates.append(self.images / (now - self.start))
        self.start, self.images = now, 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.lap(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += len(batch[0])

    def on_train_end(self, trainer, pl_module):
        self.lap(pl_module)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def plain_epochs(loader, step, epochs, device) -> list[float]:
    """Images per second of each epoch of ``step`` over ``loader``."""
    rates = []
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for x, _ in loader():
            step(x)
            images += len(x)
        sync(device)
        rates.append(images / (time.perf_counter() - start))
    return rates


def plain_loop(dm, epochs, device="cpu"):
    """The same model, data and optimiser in a hand-written loop: the floor Lightning is measured against."""
    model = vae().to(device)
    opt = fused_adam(1e-3)(model.parameters())

    def step(x):
        loss = model.negative_elbo(x.float() / 255)[0].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return plain_epochs(dm.train_dataloader, step, epochs, device)


def lightning_loop(dm, epochs, accelerator="cpu"):
    """Lightning's loop alone: Trainer.fit on the LightningModule, no logger, bar, checkpoints or callbacks."""
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer], default_root_dir="/tmp/dl4-bench")
    trainer.fit(vae(), dm)
    return timer.rates


def dl4_fit(data_dir, epochs, precision, accelerator="cpu"):
    """`dl4 fit --config configs/vae_mnist.yaml` as the CLI builds it, at the pytorch/examples size, validation off."""
    size = {"hidden_dims": "[400]", "activation": "relu"}
    cli = build_run(REPO / "configs" / "vae_mnist.yaml", [
        f"--trainer.max_epochs={epochs}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        f"--trainer.accelerator={accelerator}", "--trainer.devices=1", "--trainer.default_root_dir=/tmp/dl4-bench",
        "--trainer.logger.init_args.save_dir=/tmp/dl4-bench", "--trainer.logger.init_args.project=dl4-bench",
        *(f"--model.init_args.encoder.init_args.{k}={v}" for k, v in {**size, "code_dim": 40}.items()),
        *(f"--model.init_args.decoder.init_args.{k}={v}" for k, v in {**size, "code_dim": 20}.items()),
        f"--data.init_args.data_dir={data_dir}", "--data.init_args.batch_size=128", "--data.init_args.binarize=none",
        f"--float32_matmul_precision={precision}"])
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    import wandb

    wandb.finish()
    return timer.rates


def examples_recipe(data_dir, epochs, device="cpu"):
    """pytorch/examples vae/main.py: torchvision MNIST (all 60,000 training images), transforms.ToTensor per
    sample, DataLoader collation."""
    loader = DataLoader(datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor()), batch_size=128,
                        shuffle=True, num_workers=1)
    model = vae().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x):
        loss = model.negative_elbo(x.to(device))[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return plain_epochs(lambda: loader, step, epochs, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=default_data_dir())
    parser.add_argument("--epochs", type=int, default=2, help="epochs per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="high", choices=["highest", "high", "medium"])
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"],
                        help="gpu: the model and the MNIST tensors on the first CUDA device")
    args = parser.parse_args()
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    configure_runtime()  # as `dl4` runs: W&B offline, progress bar every 10 steps, denormals flushed
    torch.set_float32_matmul_precision(args.precision)
    L.seed_everything(0, verbose=False)
    dm = MNISTDataModule(args.data_dir, batch_size=128, download=False)
    dm.setup()
    dm.train_set = dm.train_set.to(device)  # where `dl4 fit` keeps it (MNISTDataModule(on_device=True))
    variants = {
        "plain PyTorch loop (same model, tensor data)": lambda: plain_loop(dm, args.epochs, device),
        "Lightning's loop alone (no logger, bar, callbacks)": lambda: lightning_loop(dm, args.epochs, args.accelerator),
        "`dl4 fit` (W&B offline, bar, checkpoints, dl4's callbacks)":
            lambda: dl4_fit(args.data_dir, args.epochs, args.precision, args.accelerator),
        "pytorch/examples recipe (DataLoader+ToTensor)": lambda: examples_recipe(args.data_dir, args.epochs, device),
    }
    results = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, run in variants.items():
            results[name] += run()
            print(f"round {r}: {name}: {statistics.median(results[name][-args.epochs:]):.0f} img/s", flush=True)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"\nVAE 784-400-20, batch 128, {where}, float32 matmul precision "
          f"'{args.precision}', torch {torch.__version__}, lightning {L.__version__}")
    plain = results[next(iter(variants))]
    recipe = results["pytorch/examples recipe (DataLoader+ToTensor)"]
    rows = []
    for name, rates in results.items():
        best, median = max(rates), statistics.median(rates)
        rows.append([name, f"{best:,.0f}", f"{median:,.0f}",
                     f"{100 * (max(plain) / best - 1):+.1f}%, {100 * (statistics.median(plain) / median - 1):+.1f}%",
                     f"{best / max(recipe):.2f}x, {median / statistics.median(recipe):.2f}x"])
    report("vae_speed", ["variant", "images / s, best epoch", "images / s, median epoch",
                         "time per image vs the plain loop (best, median)", "speed vs the recipe (best, median)"],
           rows, {"device": where, "precision": args.precision, "epochs": args.epochs, "rounds": args.rounds})


if __name__ == "__main__":
    main()
