"""What the tests share: where the data and configs are, the real `dl4` console script, runs built from configs."""

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _data_root() -> Path:
    return Path(os.environ.get("DL4_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


def require_dataset(relative: str) -> Path:
    """The data root if it holds ``relative``; else skip on a developer machine and fail under CI."""
    root = _data_root()
    if not (root / relative).exists():
        message = f"{root / relative} not found (set DL4_DATA_DIR to the folder holding it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must have its datasets: {message}")
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return require_dataset("MNIST/raw/train-images-idx3-ubyte")


@pytest.fixture(scope="session")
def mnist(mnist_root):
    """The MNIST datamodule, set up once (grey levels, on the CPU)."""
    from datamodules import MNISTDataModule

    dm = MNISTDataModule(str(mnist_root), download=False)
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def babi_root() -> Path:
    return require_dataset("babi/tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build_from_config(config: str | Path, *overrides: str, logger: bool = False):
    """The config's model, datamodule and trainer, built as `dl4 fit` builds them (``DL4CLI(run=False)``, so its
    seed, nets and optimiser from the config); without a logger unless asked."""
    from dl4.cli import DL4CLI

    args = ["--config", str(config), *([] if logger else ["--trainer.logger=false"]), *overrides]
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        return DL4CLI(args=args, run=False)


def dl4(*args, cwd, data_root=None, timeout=300) -> subprocess.CompletedProcess:
    """The installed `dl4` console script in a subprocess, as a user runs it: no W&B variables of this process,
    the data root given (else the environment's), output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    if data_root:
        env["DL4_DATA_DIR"] = str(data_root)
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(["dl4", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ddp_fit(config, tmp_path, data_root) -> Path:
    """`dl4 fit` of a config on 2 CPU processes (DDP, gloo), 2 short epochs, CSV logs; returns the run folder."""
    out = dl4("fit", "--config", config, "--trainer.accelerator=cpu", "--trainer.devices=2",
              "--trainer.strategy=ddp", "--trainer.logger=CSVLogger", "--trainer.logger.save_dir=runs",
              "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
              "--trainer.enable_progress_bar=false", cwd=tmp_path, data_root=data_root, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("*/version_*")
    return run
