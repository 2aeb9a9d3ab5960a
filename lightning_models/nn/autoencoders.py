"""Autoencoder building blocks: the encoder phi, the decoder psi, corruptions and regularisers.

Pure PyTorch; every function works on a batch and is testable without a trainer.
"""

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from dl4.errors import ConfigError, check_positive

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": partial(nn.LeakyReLU, 0.2), "elu": nn.ELU, "tanh": nn.Tanh,
               "sigmoid": nn.Sigmoid, "identity": nn.Identity}


def nonlinearity(name: str) -> nn.Module:
    """A new nonlinearity layer by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], activation: str = "relu", out_activation: str = "identity") -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1], ``activation`` between them and ``out_activation`` last."""
    for name in (activation, out_activation):
        nonlinearity(name)  # an unknown name fails here, even where no layer would use it
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers += [nn.Linear(n_in, n_out), nonlinearity(out_activation if last else activation)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """h = phi(x): image (B, C, H, W) -> code (B, code_dim), an MLP with ``activation`` between its hidden layers
    and ``code_activation`` on the code (``sigmoid`` for the sparse and contractive autoencoders)."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), hidden_dims: Sequence[int] = (512, 256),
                 code_dim: int = 32, activation: str = "relu", code_activation: str = "identity"):
        super().__init__()
        check_positive("Encoder", hidden_dims=hidden_dims, code_dim=code_dim)
        self.code_dim, self.code_activation, self.hidden_dims = code_dim, code_activation, tuple(hidden_dims)
        n_in = int(torch.tensor(input_shape).prod())
        self.net = nn.Sequential(nn.Flatten(), mlp([n_in, *hidden_dims, code_dim], activation, code_activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def input_layer(self) -> nn.Linear:
        return self.net[1][0]


class Decoder(nn.Module):
    """x_hat = psi(h): code (B, code_dim) -> pixel logits (B, *output_shape) (``out_channels`` values a pixel: 2 for
    the mean and log-variance of a Gaussian likelihood). List ``hidden_dims`` from the code up: (256, 512) mirrors
    an encoder of (512, 256)."""

    def __init__(self, code_dim: int = 32, hidden_dims: Sequence[int] = (256, 512),
                 output_shape: Sequence[int] = (1, 28, 28), activation: str = "relu", out_channels: int = 1):
        super().__init__()
        check_positive("Decoder", code_dim=code_dim, hidden_dims=hidden_dims, out_channels=out_channels)
        self.code_dim, self.out_channels = code_dim, out_channels
        shape = (output_shape[0] * out_channels, *output_shape[1:])
        n_out = int(torch.tensor(shape).prod())
        self.net = nn.Sequential(mlp([code_dim, *hidden_dims, n_out], activation), nn.Unflatten(1, shape))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    @property
    def output_layer(self) -> nn.Linear:
        return self.net[0][-2]


def mirrored_mlps(hidden_dims: Sequence[int], code_dim: int, activation: str = "relu",
                  code_activation: str = "identity", input_shape: Sequence[int] = (1, 28, 28),
                  encoder_outputs: int = 1, out_channels: int = 1) -> tuple[Encoder, Decoder]:
    """An MLP encoder and the decoder that mirrors it (the lecture's autoencoder), built encoder first.
    ``encoder_outputs``: values per code unit the encoder emits (2 for a VAE's mean and log-variance)."""
    return (Encoder(input_shape, hidden_dims, encoder_outputs * code_dim, activation, code_activation),
            Decoder(code_dim, list(reversed(hidden_dims)), input_shape, activation, out_channels))


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Per-image error summed over pixels: ||x - sigmoid(logits)||^2 (``mse``) or cross-entropy (``bce``)."""
    if kind == "bce":
        err = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        err = (torch.sigmoid(logits) - x) ** 2
    else:
        raise ConfigError(f"unknown reconstruction loss {kind!r}; choose 'bce' or 'mse'")
    return err.flatten(1).sum(1)


# --- Denoising autoencoder (Vincent et al. 2008): reconstruct x from a corrupted x_tilde ~ q(x_tilde | x) ---

def masking_noise(x: torch.Tensor, rate: float) -> torch.Tensor:
    """x_tilde: a random fraction ``rate`` of the inputs forced to 0."""
    return x * (torch.rand_like(x) >= rate)


def gaussian_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_tilde = x + sigma * eps, eps ~ N(0, I)."""
    return x + sigma * torch.randn_like(x)


# --- Sparse autoencoders ---

def kl_sparsity(h: torch.Tensor, rho: float = 0.05, eps: float = 1e-6) -> torch.Tensor:
    """sum_j KL(rho || rho_hat_j) with rho_hat_j = mean activation of hidden unit j over the batch (h in [0, 1])."""
    rho_hat = h.mean(0).clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


def top_k(h: torch.Tensor, k: int) -> torch.Tensor:
    """k-sparse code (Makhzani & Frey 2013): keep the k largest activations of each row, zero the rest."""
    values, index = h.topk(k, dim=1)
    return torch.zeros_like(h).scatter(1, index, values)


# --- Contractive autoencoder (Rifai et al. 2011): penalise ||J_h(x)||_F^2, J_h(x) = dh/dx ---

def contractive_penalty_sigmoid(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Closed form for h = sigmoid(W x + b): ||J||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2, per sample."""
    return ((h * (1 - h)) ** 2) @ (weight ** 2).sum(1)


def jacobian_frobenius_sq(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||J_h(x)||_F^2 per sample for any encoder, by autograd (differentiable w.r.t. the encoder's parameters)."""
    def h(x_single):
        return encoder(x_single.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(h))(x)  # (B, code_dim, *x.shape[1:])
    return jac.pow(2).flatten(1).sum(1)
