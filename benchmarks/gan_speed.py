"""Training speed of dl4's GAN against Lightning's own GAN example, same nets, same batch size (32).

    python benchmarks/gan_speed.py [--batches 600] [--rounds 3]

The baseline re-creates `examples/pytorch/domain_templates/generative_adversarial_net.py` of the Lightning
repository as it trains: G 100-128-256-512-1024-784 (batch norm from the second layer, leaky ReLU, tanh), D
784-512-256-1 (leaky ReLU), Adam(2e-4, (0.5, 0.999)); per batch one G step then one D step (toggle_optimizer,
G(z) run again for the D step) and `log_dict` of both losses; data from Lightning's demo MNIST datamodule
(torchvision MNIST, ToTensor per image, a DataLoader with 16 workers, pinned memory). dl4 trains the same nets
(sigmoid pixels in place of tanh) with its GAN module and MNISTDataModule. Both run under the same Trainer
settings (no progress bar, no checkpoints, CSV logger); the table gives training batches (one D and one G step
each) per second, after 50 warm-up batches, best and median over the rounds.
"""

import argparse
import json
import statistics
import tempfile
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from common import QUIET, build_run, default_data_dir, report
from dl4.cli import configure_runtime

WARMUP = 50


class BatchTimer(L.Callback):
    def __init__(self):
        self.stamps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stamps.append(time.perf_counter())

    def rate(self):
        return (len(self.stamps) - 1 - WARMUP) / (self.stamps[-1] - self.stamps[WARMUP])


# --- the baseline: Lightning's GAN example, as it trains ---

def _block(n_in, n_out, normalize=True):
    layers = [nn.Linear(n_in, n_out)]
    if normalize:
        layers.append(nn.BatchNorm1d(n_out, 0.8))  # the example passes 0.8 as eps
    return layers + [nn.LeakyReLU(0.2, inplace=True)]


class ExampleGAN(L.LightningModule):
    def __init__(self, latent_dim=100):
        super().__init__()
        self.automatic_optimization = False
        self.latent_dim = latent_dim
        self.generator = nn.Sequential(*_block(latent_dim, 128, normalize=False), *_block(128, 256),
                                       *_block(256, 512), *_block(512, 1024), nn.Linear(1024, 784), nn.Tanh())
        self.discriminator = nn.Sequential(nn.Linear(784, 512), nn.LeakyReLU(0.2, inplace=True), nn.Linear(512, 256),
                                           nn.LeakyReLU(0.2, inplace=True), nn.Linear(256, 1))

    def forward(self, z):
        return self.generator(z).view(len(z), 1, 28, 28)

    def training_step(self, batch):
        imgs, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(imgs.shape[0], self.latent_dim).type_as(imgs)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        self.toggle_optimizer(opt_g)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z).flatten(1)), valid)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.toggle_optimizer(opt_d)
        real_loss = F.binary_cross_entropy_with_logits(self.discriminator(imgs.flatten(1)), valid)
        fake = torch.zeros(imgs.size(0), 1).type_as(imgs)
        fake_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z).detach().flatten(1)), fake)
        d_loss = (real_loss + fake_loss) / 2
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

    def configure_optimizers(self):
        return (torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
                torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)))


def example_loader(data_dir, batch_size):
    train = datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor())
    train, _ = torch.utils.data.random_split(train, [55000, 5000], generator=torch.Generator().manual_seed(42))
    return DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=16, drop_last=True, pin_memory=True)


NETS = {  # the Lightning example's nets as dl4 nets; its optimisers are the GAN's default Adam(2e-4, (0.5, 0.999))
    "generator": {"class_path": "lightning_models.nn.gan.MLPGenerator",
                  "init_args": {"noise_dim": 100, "hidden_dims": [128, 256, 512, 1024], "activation": "leaky_relu",
                                "batch_norm": True}},
    "discriminator": {"class_path": "lightning_models.nn.gan.MLPDiscriminator",
                      "init_args": {"hidden_dims": [512, 256], "activation": "leaky_relu", "dropout": 0.0,
                                    "input_dropout": 0.0}},
}


def dl4_run(data_dir: str, batch_size: int):
    """dl4's GAN with those nets and its MNISTDataModule, built from their config as `dl4 fit` builds them. (A model
    given network objects in Python keeps them in its hparams, which a CSVLogger writes out as pickled YAML at
    every logging step; from a config the hparams hold the networks' configs.)"""
    cli = build_run(None, [*QUIET, "--model=GAN", "--model.init_args.prior=gaussian",
                           *(f"--model.init_args.{name}={json.dumps(net)}" for name, net in NETS.items()),
                           "--data=MNISTDataModule", f"--data.init_args.data_dir={data_dir}",
                           f"--data.init_args.batch_size={batch_size}"])
    return cli.model, cli.datamodule


def fit(model, datamodule, batches, root, **data):
    timer = BatchTimer()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, callbacks=[timer],
                        logger=CSVLogger(root), enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule, **data)
    return timer.rate()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=default_data_dir())
    parser.add_argument("--batches", type=int, default=600, help="training batches per run (the first 50 warm up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    configure_runtime()
    L.seed_everything(0, verbose=False)
    root = tempfile.mkdtemp(prefix="dl4-gan-speed-")
    variants = {
        "Lightning's GAN example (DataLoader, 16 workers)":
            lambda: fit(ExampleGAN(), None, args.batches, root,
                        train_dataloaders=example_loader(args.data_dir, args.batch_size)),
        "dl4 GAN, same nets (MNIST as tensors)":
            lambda: fit(*dl4_run(args.data_dir, args.batch_size), args.batches, root),
    }
    results = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, run in variants.items():
            results[name].append(run())
            print(f"round {r}: {name}: {results[name][-1]:.1f} batches/s", flush=True)
    base = statistics.median(next(iter(results.values())))
    print(f"\nbatch {args.batch_size}, lightning {L.__version__}")
    report("gan_speed", ["variant", "batches / s, best", "batches / s, median", "speed-up (median)"],
           [[name, f"{max(rates):.1f}", f"{statistics.median(rates):.1f}", f"{statistics.median(rates) / base:.2f}x"]
            for name, rates in results.items()], {"batch_size": args.batch_size})


if __name__ == "__main__":
    main()
