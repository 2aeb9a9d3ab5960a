"""VAE test log-likelihood on binarised MNIST: -ELBO and the importance-weighted NLL (Burda et al. 2016).

Trains configs/vae_mnist.yaml (latent 50, MLP 784-200-200-50 tanh, dynamic binarisation, Adam 1e-3, batch 100)
through the dl4 CLI, then tests the last checkpoint on the 10,000 test images with k importance samples.

    python benchmarks/vae_nll.py --epochs 100 --k 5000

Reference: 86.76 nats, VAE with one stochastic layer, k=1 training, 3,280 epochs (Burda et al. 2016, Table 1).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import wandb

from dl4.cli import DL4CLI, configure_runtime

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    parser.add_argument("--config", default=str(REPO / "configs" / "vae_mnist.yaml"))
    parser.add_argument("--save_dir", default="runs/bench_vae_nll")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI below gets its arguments from `args=`, not from this script's command line
    configure_runtime()
    common = ["--config", args.config, "--trainer.enable_progress_bar=false",
              f"--trainer.logger.init_args.save_dir={args.save_dir}"]

    start = time.perf_counter()
    fit = DL4CLI(args=["fit", *common, f"--trainer.max_epochs={args.epochs}"])
    train_s = time.perf_counter() - start
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    wandb.finish()  # the test gets a W&B run of its own

    start = time.perf_counter()
    test = DL4CLI(args=["test", *common, "--ckpt_path", ckpt, "--float32_matmul_precision=highest",
                        f"--model.init_args.iw_samples={args.k}"])
    test_s = time.perf_counter() - start
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items()}

    print(f"\n| model | epochs | train time | test -ELBO | test IW-NLL (k={args.k}) | eval time |")
    print("|---|---|---|---|---|---|")
    print(f"| VAE 784-200-200-50 tanh, dynamic binarisation | {args.epochs} | {train_s / 60:.1f} min "
          f"| {metrics['test/neg_elbo']:.2f} | {metrics[f'test/iw_nll_k{args.k}']:.2f} | {test_s / 60:.1f} min |")
    print(f"checkpoint: {ckpt}; {torch.get_num_threads()} CPU threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
