"""Generative adversarial nets (Goodfellow et al. 2014): the noise prior, the two players and the value function.

    min_G max_D V(D, G) = E_x~p_data[log D(x)] + E_z~p_z[log(1 - D(G(z)))]        (eq. 1)

D returns a logit l (D(x) = sigmoid(l)), so every log-probability below is a softplus:
log D = -softplus(-l) and log(1 - D) = -softplus(l), stable for any l.
"""

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dl4.errors import ConfigError, check_fraction, check_positive
from lightning_models.nn.autoencoders import nonlinearity

Prior = Literal["uniform", "gaussian"]


def sample_noise(n: int, dim: int, prior: Prior = "uniform", device=None, generator=None) -> torch.Tensor:
    """z ~ p_z: ``uniform`` on [-sqrt 3, sqrt 3]^dim (unit variance, as the paper's code) or ``gaussian`` N(0, I)."""
    if prior == "gaussian":
        return torch.randn(n, dim, device=device, generator=generator)
    if prior == "uniform":
        return (torch.rand(n, dim, device=device, generator=generator) * 2 - 1) * math.sqrt(3)
    raise ConfigError(f"unknown prior {prior!r}; choose 'uniform' or 'gaussian'")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-V(D, G) on a minibatch: -[log D(x) + log(1 - D(G(z)))], averaged; D ascends V by descending this
    (Algorithm 1, the discriminator's update)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: Literal["minimax", "non_saturating"] = "non_saturating"):
    """The generator's objective on a minibatch (Algorithm 1, the generator's update).

    ``minimax``: minimise log(1 - D(G(z))), eq. 1 as written; its gradient vanishes while D rejects G's samples.
    ``non_saturating``: minimise -log D(G(z)), the paper's practical choice (section 3): the same fixed point,
    strong gradients early in learning.
    """
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ConfigError(f"unknown generator loss {kind!r}; choose 'minimax' or 'non_saturating'")


def uniform_init(module: nn.Module, init_range: float) -> None:
    """Every weight of the module's linear and convolutional layers from U(-init_range, init_range), every bias 0
    (pylearn2's ``irange``, which the paper's code uses)."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                layer.weight.uniform_(-init_range, init_range)
                if layer.bias is not None:
                    layer.bias.zero_()


class Maxout(nn.Module):
    """h_i(x) = max_j (x W_ij + b_ij), j = 1..pieces (Goodfellow et al. 2013): the paper's discriminator units."""

    def __init__(self, n_in: int, n_out: int, pieces: int = 5):
        super().__init__()
        check_positive("Maxout", n_in=n_in, n_out=n_out, pieces=pieces)
        self.n_out, self.pieces = n_out, pieces
        self.linear = nn.Linear(n_in, n_out * pieces)

    def forward(self, x):
        return self.linear(x).unflatten(-1, (self.n_out, self.pieces)).amax(-1)


class MLPGenerator(nn.Module):
    """G(z): noise -> hidden layers (``activation``, optionally batch-normalised) -> data, through ``output``
    (``sigmoid`` for pixels in [0, 1], ``identity`` for real-valued data)."""

    def __init__(self, noise_dim: int = 100, hidden_dims: Sequence[int] = (1200, 1200),
                 data_shape: Sequence[int] = (1, 28, 28), activation: str = "relu", batch_norm: bool = False,
                 output: str = "sigmoid"):
        super().__init__()
        check_positive("MLPGenerator", noise_dim=noise_dim, hidden_dims=hidden_dims)
        self.noise_dim = noise_dim
        layers, n_in = [], noise_dim
        for i, n_out in enumerate(hidden_dims):
            layers.append(nn.Linear(n_in, n_out))
            if batch_norm and i > 0:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(nonlinearity(activation))
            n_in = n_out
        layers += [nn.Linear(n_in, math.prod(data_shape)), nonlinearity(output), nn.Unflatten(1, tuple(data_shape))]
        self.net = nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Linear:
        return self.net[-3]

    def forward(self, z):
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """D(x) as a logit: data -> hidden layers of maxout (the paper) or another activation -> 1, with dropout on
    the input and on every hidden layer (the paper trains D with dropout)."""

    def __init__(self, data_shape: Sequence[int] = (1, 28, 28), hidden_dims: Sequence[int] = (240, 240),
                 activation: str = "maxout", pieces: int = 5, dropout: float = 0.5, input_dropout: float = 0.2):
        super().__init__()
        check_positive("MLPDiscriminator", hidden_dims=hidden_dims, pieces=pieces)
        check_fraction("MLPDiscriminator", False, dropout=dropout, input_dropout=input_dropout)
        layers: list[nn.Module] = [nn.Flatten()] + ([nn.Dropout(input_dropout)] if input_dropout else [])
        n_in = math.prod(data_shape)
        for n_out in hidden_dims:
            layers += [Maxout(n_in, n_out, pieces) if activation == "maxout" else nn.Linear(n_in, n_out)]
            if activation != "maxout":
                layers.append(nonlinearity(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            n_in = n_out
        layers.append(nn.Linear(n_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).squeeze(-1)


class DCGenerator(nn.Module):
    """DCGAN-style G for 28x28 images (Radford et al. 2016): project z to 7x7 feature maps, then two fractionally
    strided convolutions (7 -> 14 -> 28) with batch norm and ReLU, sigmoid pixels."""

    def __init__(self, noise_dim: int = 100, data_shape: Sequence[int] = (1, 28, 28), width: int = 64):
        super().__init__()
        check_positive("DCGenerator", noise_dim=noise_dim, width=width)
        self.noise_dim = noise_dim
        channels, height, _ = data_shape
        base = height // 4
        self.net = nn.Sequential(
            nn.Linear(noise_dim, 2 * width * base * base, bias=False), nn.Unflatten(1, (2 * width, base, base)),
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def forward(self, z):
        return self.net(z)


class DCDiscriminator(nn.Module):
    """DCGAN-style D for 28x28 images: two strided convolutions (28 -> 14 -> 7) with leaky ReLU, a logit."""

    def __init__(self, data_shape: Sequence[int] = (1, 28, 28), width: int = 64):
        super().__init__()
        check_positive("DCDiscriminator", width=width)
        channels, height, _ = data_shape
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2 * width * (height // 4) ** 2, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)
