"""Low-dimensional toy data with a known density, for watching a GAN learn (Goodfellow et al. 2014, Figure 1)."""

import math
from collections.abc import Sequence

import lightning as L
import torch

from datamodules.tensors import TensorBatchDataset, first_examples, tensor_loader
from datamodules.user_inputs import noise_seed_inputs
from dl4.predictions import NoiseSeeds
from dl4.errors import ConfigError, check_positive


class Toy1DDataModule(L.LightningDataModule):
    """Samples of a 1-D Gaussian mixture, drawn once with a seed and kept as tensors; batches are ``(x,)`` with
    ``x`` of shape (B, 1).

    Args:
        means, stds, weights: the mixture's components (one component: a Gaussian).
        num_train, num_val, num_test: examples drawn for training, validation and test (in that order, so the
            test draw leaves the other two as they were).
        batch_size: training batch size.
        seed: seeds the draw.
        predict_samples, predict_seed: what ``dl4 predict`` asks the GAN for: this many samples, sample i drawn from
            the noise of seed ``predict_seed * 1000000 + i``. Without them it scores the test examples (D(x)).
    """

    def __init__(self, means: Sequence[float] = (2.0,), stds: Sequence[float] = (0.5,),
                 weights: Sequence[float] | None = None, num_train: int = 20000, num_val: int = 2000,
                 num_test: int = 2000, batch_size: int = 128, seed: int = 0, predict_samples: int = 0,
                 predict_seed: int = 0):
        super().__init__()
        check_positive("data", stds=list(stds), num_train=num_train, num_val=num_val, num_test=num_test,
                       batch_size=batch_size, weights=None if weights is None else list(weights))
        if len(means) != len(stds) or (weights is not None and len(weights) != len(means)):
            raise ConfigError("data.means, data.stds (and data.weights) need one entry per mixture component")
        self.means, self.stds = torch.tensor(means, dtype=torch.float), torch.tensor(stds, dtype=torch.float)
        w = torch.tensor(weights if weights is not None else [1.0] * len(means), dtype=torch.float)
        self.weights = w / w.sum()
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size, self.seed = batch_size, seed
        self.predict_samples, self.predict_seed, self.predict_names = predict_samples, predict_seed, None
        self.train_set = self.val_set = self.test_set = None

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return (self.means[k] + self.stds[k] * torch.randn(n, generator=generator)).unsqueeze(1)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """p_data(x) = sum_k w_k N(x; mu_k, s_k^2), for x of any shape."""
        z = (x.unsqueeze(-1) - self.means) / self.stds
        return (self.weights * torch.exp(-0.5 * z ** 2) / (self.stds * math.sqrt(2 * math.pi))).sum(-1)

    def setup(self, stage: str | None = None):
        if self.train_set is None:
            g = torch.Generator().manual_seed(self.seed)
            self.train_set = TensorBatchDataset(self.sample(self.num_train, g))
            self.val_set = TensorBatchDataset(self.sample(self.num_val, g))
            self.test_set = TensorBatchDataset(self.sample(self.num_test, g))

    def fixed_batch(self, n: int, seed: int = 0, device=None):
        """The first ``n`` validation examples, as a validation step gets them."""
        return first_examples(self, self.val_set, n, device)

    def train_dataloader(self):
        return tensor_loader(self.train_set, self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return tensor_loader(self.val_set, self.num_val, shuffle=False)

    def test_dataloader(self):
        return tensor_loader(self.test_set, self.num_test, shuffle=False)

    def predict_dataloader(self):
        if not self.predict_samples:
            self.predict_names = [f"test example {i}" for i in range(self.num_test)]
            return self.test_dataloader()
        self.predict_names, seeds = noise_seed_inputs(self.predict_samples, self.predict_seed)
        return tensor_loader(seeds, self.num_test, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.predict_samples and self.trainer is not None and self.trainer.predicting:
            return NoiseSeeds(batch[0])
        return batch
