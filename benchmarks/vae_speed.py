"""Training speed of the VAE: dl4 (Lightning) against a plain PyTorch loop of the same model, and against the
pytorch/examples VAE recipe (torchvision DataLoader, per-sample ToTensor), all at 784-400-20, batch 128.

    python benchmarks/vae_speed.py [--epochs 4] [--rounds 3] [--accelerator cpu|gpu]

Each round times a few epochs of every variant in turn (interleaved, so a noisy machine hurts all alike). The
table reports, in training images per second (validation excluded), the best epoch (the machine's speed when
nothing else runs) and the median epoch over all rounds.
"""

import argparse
import importlib.util
import statistics
import time

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from common import default_data_dir, report
from datamodules import MNISTDataModule
from dl4.cli import configure_runtime
from lightning_models import VAE
from lightning_models.nn.autoencoders import mirrored_mlps
from lightning_models.optim import fused_adam


def vae():
    """The pytorch/examples VAE's size: 784-400-20 (ReLU), Bernoulli likelihood."""
    return VAE(*mirrored_mlps((400,), 20, "relu", encoder_outputs=2), likelihood="bernoulli")


class EpochTimer(L.Callback):
    def __init__(self):
        self.times = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.times.append(time.perf_counter() - self.start)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def plain_loop(dm, epochs, device="cpu"):
    """The same model, data and optimiser in a hand-written loop: the floor Lightning is measured against."""
    model = vae().to(device)
    opt = fused_adam(1e-3)(model.parameters())
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, _ in dm.train_dataloader():
            loss = model.negative_elbo(x.float() / 255)[0].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def lightning_fit(dm, epochs, full, accelerator="cpu"):
    """dl4's way: Trainer.fit on the LightningModule; ``full`` adds what `dl4 fit` runs with (W&B offline logger,
    progress bar, checkpointing)."""
    timer = EpochTimer()
    logger = L.pytorch.loggers.WandbLogger(project="dl4-bench", save_dir="/tmp/dl4-bench", offline=True) if full else False
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=logger,
                        enable_progress_bar=full, enable_checkpointing=full,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
                        default_root_dir="/tmp/dl4-bench")
    trainer.fit(vae(), dm)
    if full:
        import wandb
        wandb.finish()
    return timer.times


def examples_recipe(data_dir, epochs, device="cpu"):
    """pytorch/examples vae/main.py: torchvision MNIST, transforms.ToTensor per sample, DataLoader collation."""
    loader = DataLoader(datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor()), batch_size=128,
                        shuffle=True, num_workers=1)
    model = vae().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, _ in loader:
            loss = model.negative_elbo(x.to(device))[0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=default_data_dir())
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant and round")
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
    n_train = len(dm.train_set) // 128 * 128
    variants = {
        "plain PyTorch loop (same model, tensor data)": lambda: plain_loop(dm, args.epochs, device),
        "dl4 / Lightning, lean (no logger, no bar)": lambda: lightning_fit(dm, args.epochs, False, args.accelerator),
        "dl4 / Lightning as `dl4 fit` (W&B, bar, ckpt)": lambda: lightning_fit(dm, args.epochs, True, args.accelerator),
        "pytorch/examples recipe (DataLoader+ToTensor)": lambda: examples_recipe(args.data_dir, args.epochs, device),
    }
    if importlib.util.find_spec("wandb") is None:
        print("wandb is not installed: the `dl4 fit` variant is left out")
        variants = {k: v for k, v in variants.items() if "W&B" not in k}
    results = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, run in variants.items():
            results[name] += run()
            print(f"round {r}: {name}: {n_train / statistics.median(results[name][-args.epochs:]):.0f} img/s",
                  flush=True)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"\nVAE 784-400-20, batch 128, {where}, float32 matmul precision "
          f"'{args.precision}', torch {torch.__version__}, lightning {L.__version__}")
    plain = results[next(iter(variants))]
    rows = []
    for name, times in results.items():
        best, median = min(times), statistics.median(times)
        rows.append([name, f"{best:.2f}", f"{n_train / best:,.0f}", f"{n_train / median:,.0f}",
                     f"{100 * (best / min(plain) - 1):+.0f}%, {100 * (median / statistics.median(plain) - 1):+.0f}%"])
    report("vae_speed", ["variant", "best epoch (s)", "images / s, best", "images / s, median",
                         "time vs plain loop (best, median)"], rows, {"device": where, "precision": args.precision})


if __name__ == "__main__":
    main()
