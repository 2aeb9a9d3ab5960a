"""The autoencoder family on one protocol: grey-level MNIST, each model's config hyperparameters, E epochs of Adam.

For every model (and the same architecture untrained, as the baseline its codes must beat), on the 10,000 test
images: reconstruction cross-entropy (nats per image), linear-probe accuracy of the frozen codes (multinomial
logistic regression fit on the 55,000 training codes), mean code activation, the fraction of code units that are
(near) zero, and the mean Frobenius norm of the encoder Jacobian ||J_h(x)||_F.

    python benchmarks/autoencoders.py --epochs 10
"""

import argparse
import importlib
import os
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from torchmetrics.functional import accuracy

from datamodules import MNISTDataModule
from lightning_models.nn.autoencoders import jacobian_frobenius_sq, reconstruction_error

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["ae_mnist", "dae_mnist", "sparse_ae_mnist", "ksparse_ae_mnist", "cae_mnist", "vae_mnist"]


def model_from_config(name: str):
    model = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["model"]
    module, _, cls = model["class_path"].rpartition(".")
    return getattr(importlib.import_module(module or "lightning_models"), cls)(**model.get("init_args", {}))


@torch.no_grad()
def codes(model, x: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    return torch.cat([model.encode(x[i:i + batch]) for i in range(0, len(x), batch)])


def linear_probe(train_h, train_y, test_h, test_y, steps: int = 200) -> float:
    """Multinomial logistic regression (L-BFGS, standardised features, light L2) on frozen codes; test accuracy."""
    mean, std = train_h.mean(0), train_h.std(0) + 1e-6
    train_h, test_h = (train_h - mean) / std, (test_h - mean) / std
    w = torch.zeros(train_h.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(train_h @ w + b, train_y) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return accuracy(test_h @ w + b, test_y, task="multiclass", num_classes=10).item()


def evaluate(model, dm) -> dict:
    model.eval()
    x_train, y_train = dm.train_set.tensors[0].float() / 255, dm.train_set.tensors[1]
    x_test, y_test = dm.test_set.tensors[0].float() / 255, dm.test_set.tensors[1]
    h_train, h_test = codes(model, x_train), codes(model, x_test)
    with torch.no_grad():
        # the VAE's code is the posterior mean; its decoder's first channel is the Bernoulli logit either way
        recon = torch.cat([reconstruction_error(model.decoder(h)[:, :1], x, "bce")
                           for h, x in zip(h_test.split(1000), x_test.split(1000))]).mean().item()
    jac = torch.cat([jacobian_frobenius_sq(model.encode, x).sqrt() for x in x_test[:1000].split(50)]).mean().item()
    return {
        "recon": recon,
        "probe": linear_probe(h_train, y_train, h_test, y_test),
        "mean_act": h_test.abs().mean().item(),
        "zero_frac": (h_test.abs() < 1e-2).float().mean().item(),
        "jacobian": jac,
        "code_dim": h_test.shape[1],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.environ.get("DL4_DATA_DIR", "./data"))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision("high")
    dm = MNISTDataModule(args.data_dir, batch_size=128, download=False)
    dm.setup()
    rows = []
    for name in CONFIGS:
        L.seed_everything(0, verbose=False)
        baseline = evaluate(model_from_config(name), dm)
        model = model_from_config(name)
        start = time.perf_counter()
        L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0).fit(model, dm)
        minutes = (time.perf_counter() - start) / 60
        trained = evaluate(model, dm)
        rows.append((name, type(model).__name__, trained, baseline, minutes))
        print(name, trained, "untrained:", baseline, f"{minutes:.1f} min", flush=True)

    print(f"\nMNIST test set, {args.epochs} epochs each, batch 128, Adam; untrained = same architecture at init")
    print("| config | model | code | test recon (nats) | linear probe acc (untrained) | mean abs activation "
          "| near-zero units | mean ‖J‖_F (untrained) | train time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cls, t, b, minutes in rows:
        print(f"| {name} | {cls} | {t['code_dim']} | {t['recon']:.1f} | {100 * t['probe']:.2f}% "
              f"({100 * b['probe']:.2f}%) | {t['mean_act']:.3f} | {100 * t['zero_frac']:.1f}% "
              f"| {t['jacobian']:.2f} ({b['jacobian']:.2f}) | {minutes:.1f} min |")


if __name__ == "__main__":
    main()
