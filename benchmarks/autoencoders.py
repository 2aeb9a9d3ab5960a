"""The autoencoder family on one protocol: grey-level MNIST, each model's config hyperparameters, E epochs of Adam.

For every model (and the same architecture untrained, as the baseline its codes must beat), on the 10,000 test
images: reconstruction cross-entropy (nats per image), linear-probe accuracy of the frozen codes (multinomial
logistic regression fit on the 55,000 training codes), mean code activation, the fraction of code units that are
(near) zero, and the mean Frobenius norm of the encoder Jacobian ||J_h(x)||_F.

    python benchmarks/autoencoders.py --epochs 10
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.functional import accuracy

from common import QUIET, REPO, Timer, build_run, default_data_dir, report
from datamodules import MNISTDataModule
from lightning_models.nn.autoencoders import jacobian_frobenius_sq, reconstruction_error

CONFIGS = ["ae_mnist", "dae_mnist", "sparse_ae_mnist", "ksparse_ae_mnist", "cae_mnist", "vae_mnist"]


def models_from_config(name: str):
    """Two models of the config (its nets and optimiser), drawn one after the other from its seed: the first
    stays untrained (the baseline), the second is trained."""
    config = REPO / "configs" / f"{name}.yaml"
    baseline = build_run(config, QUIET).model  # seeds with the config's seed_everything
    return baseline, build_run(config, QUIET + ["--seed_everything=false"]).model  # the next draw, not a copy


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
    parser.add_argument("--data_dir", default=default_data_dir())
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision("high")
    dm = MNISTDataModule(args.data_dir, batch_size=128, download=False)
    dm.setup()
    rows = []
    for name in CONFIGS:
        untrained, model = models_from_config(name)
        baseline = evaluate(untrained, dm)
        with Timer() as timer:
            L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0).fit(model, dm)
        t = evaluate(model, dm)
        print(name, t, "untrained:", baseline, f"{timer.seconds / 60:.1f} min", flush=True)
        rows.append([name, type(model).__name__, t["code_dim"], f"{t['recon']:.1f}",
                     f"{100 * t['probe']:.2f}% ({100 * baseline['probe']:.2f}%)", f"{t['mean_act']:.3f}",
                     f"{100 * t['zero_frac']:.1f}%", f"{t['jacobian']:.2f} ({baseline['jacobian']:.2f})",
                     f"{timer.seconds / 60:.1f} min"])

    print(f"\nMNIST test set, {args.epochs} epochs each, batch 128, Adam; untrained = same architecture at init")
    report("autoencoders", ["config", "model", "code", "test recon (nats)", "linear probe acc (untrained)",
                            "mean abs activation", "near-zero units", "mean ‖J‖_F (untrained)", "train time"], rows)


if __name__ == "__main__":
    main()
