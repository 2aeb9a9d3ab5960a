"""VAE test log-likelihood on binarised MNIST: -ELBO and the importance-weighted NLL (Burda et al. 2016).

Trains configs/vae_mnist.yaml (latent 50, MLP 784-200-200-50 tanh, dynamic binarisation, Adam 1e-3, batch 100)
through the dl4 CLI, then tests the last checkpoint on the 10,000 test images with k importance samples.

    python benchmarks/vae_nll.py --epochs 100 --k 5000

Reference: 86.76 nats, VAE with one stochastic layer, k=1 training, 3,280 epochs (Burda et al. 2016, Table 1).
"""

import argparse

import wandb

from common import REPO, Timer, build_run, report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    parser.add_argument("--config", default=str(REPO / "configs" / "vae_mnist.yaml"))
    parser.add_argument("--save_dir", default="runs/bench_vae_nll")
    args = parser.parse_args()
    common = ["--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={args.save_dir}"]

    with Timer() as train:
        fit = build_run(args.config, [f"--trainer.max_epochs={args.epochs}", *common])
        fit.trainer.fit(fit.model, datamodule=fit.datamodule)
    # the config's second ModelCheckpoint keeps last.ckpt (the first one, trainer.checkpoint_callback, the best epoch)
    ckpt = next(cb.last_model_path for cb in fit.trainer.checkpoint_callbacks if cb.last_model_path)
    wandb.finish()  # the test gets a W&B run of its own

    with Timer() as evaluation:
        test = build_run(args.config, [*common, "--float32_matmul_precision=highest",
                                       f"--model.init_args.iw_samples={args.k}"])
        (metrics,) = test.trainer.test(test.model, datamodule=test.datamodule, ckpt_path=ckpt)

    print(f"\ncheckpoint: {ckpt}")
    report("vae_nll", ["model", "epochs", "train time", "test -ELBO", f"test IW-NLL (k={args.k})", "eval time"],
           [["VAE 784-200-200-50 tanh, dynamic binarisation", args.epochs, f"{train.seconds / 60:.1f} min",
             f"{metrics['test/neg_elbo']:.2f}", f"{metrics[f'test/iw_nll_k{args.k}']:.2f}",
             f"{evaluation.seconds / 60:.1f} min"]])


if __name__ == "__main__":
    main()
