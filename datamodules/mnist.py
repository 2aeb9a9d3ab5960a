"""MNIST as uint8 tensors in memory (on the accelerator when training on one), optionally binarised.

Binarisation (as in the VAE/IWAE literature): ``fixed`` samples every pixel once from Bernoulli(intensity) with a
seed; ``dynamic`` resamples the training images every time they are drawn, while the validation and test images are
binarised once with a fixed seed so that their numbers are comparable across runs.
"""

from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torchvision.datasets import MNIST

from dl4.data_root import DatasetNotFoundError, default_data_dir
from datamodules.integrity import verify_idx, verify_labels, verify_published
from datamodules.user_inputs import digit_images, noise_seed_inputs
from dl4.predictions import NoiseSeeds
from datamodules.tensors import TensorBatchDataset, first_examples, tensor_loader
from dl4.errors import ConfigError, check_positive

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_mnist(data_dir: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, 28, 28) uint8 and labels (N,) int64 of one MNIST split, read by torchvision after its files
    are verified (``datamodules/integrity.py``: the published SHA-256, the IDX headers and sizes, labels 0-9).
    Missing files are fetched first if ``download`` (``datamodules/download.py``, as ``dl4 data download mnist``)."""
    raw = Path(data_dir) / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    if download and not (images.is_file() and labels.is_file()):
        from datamodules.download import download_mnist

        download_mnist(Path(data_dir))  # a DownloadError says what it tried and what to do
    if not (images.is_file() and labels.is_file()):
        raise DatasetNotFoundError(
            f"MNIST not found: looked for {', '.join(MNIST_FILES)} in {raw.resolve()} and downloading is disabled "
            f"(download: false).\nRun `dl4 data download mnist --root {Path(data_dir).resolve()}` (or put the four "
            f"IDX files, or their .gz, in that folder), point the data root at the folder holding MNIST/raw "
            f"(DL4_DATA_DIR=... or --data.init_args.data_dir=...), or allow --data.init_args.download=true.")
    verify_mnist(images, labels, 60000 if train else 10000)
    ds = MNIST(data_dir, train=train, download=False)
    verify_labels(labels, ds.targets, RESTORE_MNIST)
    return ds.data, ds.targets


RESTORE_MNIST = ("Delete it (and its .gz) and download MNIST again (`dl4 data download mnist`), or unpack the "
                 "original train-/t10k-{images-idx3,labels-idx1}-ubyte.gz into that folder.")


def verify_mnist(images: Path, labels: Path, count: int) -> None:
    verify_idx(images, 3, count, RESTORE_MNIST)
    verify_idx(labels, 1, count, RESTORE_MNIST)
    for path in (images, labels):
        verify_published(path, f"MNIST/raw/{path.name}", RESTORE_MNIST)


class MNISTDataModule(L.LightningDataModule):
    """MNIST 28x28 digits; batches are ``(x, y)`` with ``x`` float in [0, 1] of shape (B, 1, 28, 28).

    Args:
        data_dir: folder holding ``MNIST/raw``; default ``$DL4_DATA_DIR`` or ``./data``.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        val_size: images held out of the 60k training set for validation.
        val_split: ``random`` (a seeded random split) or ``tail``: the last ``val_size`` training images in file
            order, the classic 50k/10k split (train[50000:60000] with val_size 10000) that the GAN paper's Parzen
            protocol selects its bandwidth on.
        binarize: ``none`` (grey levels), ``fixed`` or ``dynamic`` Bernoulli binarisation.
        download: fetch the files when they are missing.
        seed: seeds the train/validation split and the fixed binarisation.
        on_device: keep the tensors on the accelerator the trainer uses (no host-to-device copy per batch).
        predict_path: what ``dl4 predict`` reads: a folder of digit images (PNG, JPEG; any size, made grey and
            ``image_size`` square as MNIST is: ``datamodules/user_inputs.py``) or one image. Default: the test set.
        predict_samples, predict_seed: instead, ask a generative model (VAE, GAN) for this many samples; sample i
            is drawn from the noise of seed ``predict_seed * 1000000 + i``, so a seed always gives the same samples.
    """

    def __init__(self, data_dir: str | None = None, batch_size: int = 128, eval_batch_size: int = 1000,
                 val_size: int = 5000, val_split: Literal["random", "tail"] = "random",
                 binarize: Literal["none", "fixed", "dynamic"] = "none", download: bool = True, seed: int = 0,
                 on_device: bool = True, predict_path: str | None = None, predict_samples: int = 0,
                 predict_seed: int = 0):
        super().__init__()
        check_positive("data", batch_size=batch_size, eval_batch_size=eval_batch_size)
        if not 0 < val_size < 60000:
            raise ConfigError(f"data.val_size must be between 1 and 59999, got {val_size}")
        self.data_dir = data_dir or default_data_dir()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.val_split, self.binarize, self.download = val_size, val_split, binarize, download
        self.seed, self.on_device = seed, on_device
        if predict_samples < 0 or (predict_samples and predict_path):
            raise ConfigError("data.predict_samples must be >= 0, and is for sampling: give it or data.predict_path, "
                              "not both")
        self.predict_path, self.predict_samples, self.predict_seed = predict_path, predict_samples, predict_seed
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self.predict_names: list[str] | None = None

    @property
    def image_size(self) -> int:
        """The side of the images a model of this data reads."""
        return 28

    def own_inputs(self) -> bool:
        """True when ``dl4 predict`` runs on the user's inputs (images or samples): MNIST itself is not needed."""
        return bool(self.predict_path or self.predict_samples) and self.trainer is not None and \
            self.trainer.predicting

    def read_predict_inputs(self) -> None:
        """The user's images (uint8, like MNIST's, binarised as the test set is when ``binarize`` is set; label -1),
        or the noise seeds of the samples asked for."""
        if self.predict_samples:
            model = self.trainer.lightning_module
            if not callable(getattr(model, "sample", None)):
                raise ConfigError(f"data.predict_samples: a {type(model).__name__} has no prior to sample from; give "
                                  "data.predict_path (images) instead, or use a generative model (VAE, GAN)")
            self.predict_names, self.predict_set = noise_seed_inputs(self.predict_samples, self.predict_seed)
            return
        self.predict_names, x = digit_images(self.predict_path, self.image_size)
        if self.binarize != "none":  # as the test images are: once, from the seed
            x = self._binarize(x, torch.Generator().manual_seed(self.seed))
        self.predict_set = TensorBatchDataset(x, torch.full((len(x),), -1))

    def prepare_data(self):
        if self.own_inputs():
            return
        for train in (True, False):
            load_mnist(self.data_dir, train, self.download)

    def setup(self, stage: str | None = None):
        if self.own_inputs():
            return self.read_predict_inputs()
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        x, y = load_mnist(self.data_dir, True, download=False)
        x_test, y_test = load_mnist(self.data_dir, False, download=False)
        if self.val_split == "tail":  # the classic split: the last val_size images, in file order
            n_train = len(x) - self.val_size
            train_idx, val_idx = torch.arange(n_train), torch.arange(n_train, len(x))
        else:
            perm = torch.randperm(len(x), generator=g)
            train_idx, val_idx = perm[self.val_size:], perm[:self.val_size]
        x_train, x_val = x[train_idx], x[val_idx]
        if self.binarize != "none":
            x_val, x_test = self._binarize(x_val, g), self._binarize(x_test, g)
            if self.binarize == "fixed":
                x_train = self._binarize(x_train, g)
        device = self.trainer.strategy.root_device if self.on_device and self.trainer is not None else "cpu"
        self.train_set = TensorBatchDataset(x_train.unsqueeze(1), y[train_idx]).to(device)
        self.val_set = TensorBatchDataset(x_val.unsqueeze(1), y[val_idx]).to(device)
        self.test_set = TensorBatchDataset(x_test.unsqueeze(1), y_test).to(device)

    @staticmethod
    def _binarize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return (torch.bernoulli(x / 255.0, generator=g) * 255).to(torch.uint8)

    def train_dataloader(self):
        return tensor_loader(self.train_set, self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return tensor_loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return tensor_loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self):
        if self.predict_set is not None:
            return tensor_loader(self.predict_set, self.eval_batch_size, shuffle=False)
        self.predict_names = [f"test image {i}" for i in range(len(self.test_set))]
        return self.test_dataloader()

    def fixed_batch(self, n: int, seed: int = 0, device=None):
        """The first ``n`` validation images and labels, as a validation step gets them (the split is fixed)."""
        return first_examples(self, self.val_set, n, device)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if len(batch) == 1:  # the noise seeds of data.predict_samples
            return NoiseSeeds(batch[0])
        x, y = batch
        x = x.float() / 255.0
        if self.binarize == "dynamic" and self.trainer is not None and self.trainer.training:
            x = torch.bernoulli(x)
        return x, y
