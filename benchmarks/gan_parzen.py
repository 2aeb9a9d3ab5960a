"""The GAN paper's Parzen-window evaluation (Goodfellow et al. 2014, Table 1) of trained GAN checkpoints, with
the same estimator applied to real training images as a reference row.

    dl4 fit --config configs/dcgan_mnist.yaml            # or gan_mnist.yaml; prints where the checkpoints are
    python benchmarks/gan_parzen.py --ckpt dcgan=runs/.../checkpoints/last.ckpt [--ckpt mlp=...]

Protocol (the paper's parzen_ll.py): 10,000 samples from G; sigma from logspace(-1, 0, 10) by the mean
log-likelihood of train[50000:51000]; the score is the mean log-likelihood of the 10,000 MNIST test images
+- std / sqrt(10,000), in nats, pixels in [0, 1]. The reference row puts train[:10000] in place of the samples.
"""

import argparse
import os

import torch
from lightning.pytorch.cli import instantiate_module

from common import Timer, default_data_dir, report

from datamodules.mnist import load_mnist
from lightning_models import GAN
from lightning_models.nn.gan import sample_noise
from lightning_models.nn.parzen import parzen_evaluate

PAPER = [("DBN", 138, 2), ("Stacked CAE", 121, 1.6), ("Deep GSN", 214, 1.1), ("Adversarial nets", 225, 2)]


@torch.no_grad()
def gan_samples(model: GAN, n: int, seed: int = 1) -> torch.Tensor:
    model.eval()
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same noise whatever the model's device
    z = sample_noise(n, model.noise_dim, model.hparams.prior, generator=g)
    return torch.cat([model.generator(zb.to(model.device)) for zb in z.split(1000)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH", help="a GAN checkpoint")
    parser.add_argument("--data_dir", default=default_data_dir())
    parser.add_argument("--samples", type=int, default=10000)
    args = parser.parse_args()
    checkpoints = []
    for spec in args.ckpt:
        name, _, path = spec.partition("=") if "=" in spec.split("/")[0] else ("", "", spec)
        if not os.path.isfile(path):
            parser.error(f"--ckpt {spec}: no checkpoint file at {path}")
        checkpoints.append((name, path))
    torch.set_flush_denormal(True)
    x_train, _ = load_mnist(args.data_dir, True, download=False)
    x_test, _ = load_mnist(args.data_dir, False, download=False)
    as_float = lambda x: x.float().div(255).unsqueeze(1)  # noqa: E731
    valid, test = as_float(x_train[50000:51000]), as_float(x_test)

    rows = []

    def evaluate(name, centers):
        with Timer() as timer:
            r = parzen_evaluate(centers, valid, test)
        rows.append([name, round(r["sigma"], 3), f"{r['mean']:.1f} +- {r['stderr']:.1f}", f"{timer.seconds:.1f} s"])
        print(f"{name}: {r['mean']:.1f} +- {r['stderr']:.1f} nats (sigma {r['sigma']:.3f})", flush=True)

    evaluate("real training images train[:10000] (reference)", as_float(x_train[: args.samples]))
    for name, path in checkpoints:
        model = GAN.load_from_checkpoint(path, map_location="cpu")
        evaluate(f"{name or path}: trained GAN", gan_samples(model, args.samples))
        torch.manual_seed(0)
        # the same config's model with fresh weights, built from the checkpoint's stored config (not from
        # model.hparams, which after load_from_checkpoint hold the trained network objects themselves)
        config = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
        untrained = instantiate_module(GAN, {k: v for k, v in config.items() if k != "_instantiator"})
        evaluate(f"{name or path}: the same GAN untrained", gan_samples(untrained, args.samples))
    rows += [[f"paper: {name}", "", f"{mean} +- {stderr}", ""] for name, mean, stderr in PAPER]
    print()
    report("gan_parzen", ["model", "sigma", "Parzen log-likelihood (nats)", "evaluation time"], rows)


if __name__ == "__main__":
    main()
