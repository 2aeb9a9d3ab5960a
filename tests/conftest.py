import os
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
