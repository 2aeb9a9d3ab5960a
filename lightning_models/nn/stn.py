"""Spatial transformer networks (Jaderberg et al. 2015, sec. 3; slides "Spatial Transformer Networks"), plain torch.

A spatial transformer warps its input U (B, C, H, W) into an output V (B, C, H', W') in three steps:

    theta = f_loc(U)                                   the localisation net                 (sec. 3.1)
    (x^s_i, y^s_i) = T_theta(G_i)                      the grid generator, for every target  (sec. 3.2, eq. 1)
                                                       pixel G_i = (x^t_i, y^t_i)
    V_i = sum_n sum_m U_nm max(0, 1 - |x^s_i - m|) max(0, 1 - |y^s_i - n|)   the bilinear sampler (sec. 3.3, eq. 5)

Coordinates are normalised to [-1, 1] over the image (-1 the left/top edge, +1 the right/bottom edge), with
``align_corners=False`` everywhere (``ALIGN_CORNERS``): pixel i of W lies at (2i + 1)/W - 1, so a grid generated for
one size samples another size consistently, and the identity transform at the same size reads every pixel centre
exactly. The sampler is ``F.grid_sample`` (bilinear, zeros outside the image), the slide's eq. 5 with U = 0 outside.
The grid generators of eq. 1 and the homography, and the sampler of eq. 5, are in ``dl4/warps.py``: the distorted
MNIST data warps its digits with the same functions, and data and models share them from there.
"""

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from dl4.errors import ConfigError
from dl4.warps import affine_grid, bilinear_sample, projective_grid, target_grid

Transform = Literal["affine", "projective", "tps"]


def tps_kernel(r2: torch.Tensor) -> torch.Tensor:
    """The thin-plate spline's radial basis U(r) = r^2 log r^2, written on r^2 (U(0) = 0)."""
    return r2 * torch.log(r2.clamp_min(1e-12))


def control_points(rows: int, cols: int) -> torch.Tensor:
    """K = rows x cols control points on a regular grid spanning [-1, 1]^2, (K, 2) as (x, y)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, rows), torch.linspace(-1, 1, cols), indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)


class TPSGridGenerator(nn.Module):
    """Thin-plate-spline grid generator (sec. 3.2): theta is where the K control points P_k of the target grid come
    from in the source, P'_k (B, K, 2). The spline T(p) = a_0 + a_x x + a_y y + sum_k w_k U(|p - P_k|) with
    T(P_k) = P'_k is linear in P': T(G) = M P' for a fixed M (the slide's T_theta = M_theta B), so the kernel system
    is solved once, at construction, and a batch costs one matrix product.

    Args:
        grid: (rows, cols) of control points (the paper's 4 x 4).
        size: (H', W') of the output grid.
    """

    def __init__(self, grid: Sequence[int] = (4, 4), size: Sequence[int] = (28, 28)):
        super().__init__()
        rows, cols = grid
        if rows < 2 or cols < 2:
            raise ConfigError(f"SpatialTransformer tps_grid must be at least 2 x 2 control points, got {rows} x {cols}")
        P = control_points(rows, cols).double()
        K = len(P)
        # [[U(|P_i - P_j|), 1, P], [(1, P)^T, 0]] [w; a] = [P'; 0]: Bookstein's system, solved once in float64
        L = torch.zeros(K + 3, K + 3, dtype=torch.float64)
        L[:K, :K] = tps_kernel(torch.cdist(P, P) ** 2)
        L[:K, K] = L[K, :K] = 1
        L[:K, K + 1:] = P
        L[K + 1:, :K] = P.T
        self.register_buffer("control", P.float())
        self.register_buffer("inverse", torch.linalg.inv(L)[:, :K])  # (K + 3, K): [w; a] = inverse @ P'
        self.size = tuple(size)
        self.register_buffer("M", self.basis(target_grid(*self.size, dtype=torch.float64)).float())

    def basis(self, points: torch.Tensor) -> torch.Tensor:
        """M for arbitrary target points (N, 2): T(points) = M @ P', (N, K)."""
        P = self.control.to(points.dtype)
        B = torch.cat([tps_kernel(torch.cdist(points, P) ** 2), points.new_ones(len(points), 1), points], dim=1)
        return B @ self.inverse.to(points.dtype)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """theta (B, 2K), the source positions P' -> the grid (B, H', W', 2)."""
        source = self.M @ theta.view(len(theta), -1, 2)  # (B, H'W', 2)
        return source.view(len(theta), *self.size, 2)


def identity_theta(transform: Transform, tps_grid: Sequence[int] = (4, 4)) -> torch.Tensor:
    """The parameters of the identity transform, flat: what the localisation net's regression layer starts at."""
    if transform == "affine":
        return torch.tensor([1.0, 0, 0, 0, 1, 0])
    if transform == "projective":
        return torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0])
    if transform == "tps":
        return control_points(*tps_grid).flatten()
    raise ConfigError(f"SpatialTransformer transform must be affine, projective or tps, got {transform!r}")


class SpatialTransformer(nn.Module):
    """U (B, C, H, W) -> V (B, C, H', W'): localisation net, grid generator, bilinear sampler. Insert it anywhere in
    a network (on the input, or on feature maps).

    Args:
        localisation: the localisation net's body, U -> features (B, F); a regression layer F -> theta follows,
            initialised to the identity transform (weights 0, bias the identity's parameters), so the untrained
            transformer passes its input through.
        features: F, the size of the body's output.
        transform: ``affine`` (6 parameters), ``projective`` (8) or ``tps`` (2K); a ``str`` rather than a
            ``Literal``, so that a wrong name gets dl4's one-line error rather than the parser's page.
        size: (H', W') of the output; a smaller size crops and rescales (the slides' region of interest).
        tps_grid: (rows, cols) of the TPS control points.
    """

    def __init__(self, localisation: nn.Module, features: int, transform: str = "affine",
                 size: Sequence[int] = (28, 28), tps_grid: Sequence[int] = (4, 4)):
        super().__init__()
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"SpatialTransformer size (the output's H', W') must be two positive numbers, got "
                              f"{list(size)}")
        identity = identity_theta(transform, tps_grid)  # an unknown transform fails here
        self.transform, self.size, self.tps_grid = transform, tuple(size), tuple(tps_grid)
        self.localisation = localisation
        self.regression = nn.Linear(features, len(identity))
        with torch.no_grad():
            self.regression.weight.zero_()
            self.regression.bias.copy_(identity)
        self.tps = TPSGridGenerator(tps_grid, size) if transform == "tps" else None

    def theta(self, U: torch.Tensor) -> torch.Tensor:
        """theta = f_loc(U), flat (B, parameters)."""
        return self.regression(self.localisation(U))

    def grid(self, theta: torch.Tensor, channels: int) -> torch.Tensor:
        """T_theta(G): where every output pixel samples the input, (B, H', W', 2) in normalised coordinates."""
        size = (len(theta), channels, *self.size)
        if self.transform == "affine":
            return affine_grid(theta.view(-1, 2, 3), size)
        if self.transform == "projective":
            return projective_grid(theta, size)
        return self.tps(theta)

    def forward(self, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V and theta (the pictures and the scale statistics read theta)."""
        theta = self.theta(U)
        # Coordinates in float32 even under mixed precision: bfloat16 would place a sample up to 0.1 pixel off.
        with torch.autocast(U.device.type, enabled=False):
            theta = theta.float()
            return bilinear_sample(U.float(), self.grid(theta, U.shape[1])).to(U.dtype), theta


def affine_scale_rotation(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The isotropic scale sqrt|det A| and the rotation atan2(a_21 - a_12, a_11 + a_22) (degrees) of affine
    thetas (B, 6): a transformer that zooms in on a digit has a scale below 1 (it samples a smaller region)."""
    A = theta.view(-1, 2, 3)[:, :, :2]
    scale = torch.linalg.det(A).abs().sqrt()
    rotation = torch.atan2(A[:, 1, 0] - A[:, 0, 1], A[:, 0, 0] + A[:, 1, 1]) * 180 / math.pi
    return scale, rotation


def _flat_size(body: nn.Module, input_size: int, channels: int) -> int:
    """The number of features ``body`` gives for one (channels, input_size, input_size) image."""
    with torch.no_grad():
        return body(torch.zeros(1, channels, input_size, input_size)).numel()


class LocalisationCNN(nn.Module):
    """f_loc's body for images: max-pool, then two 5 x 5 convolutions with max pooling and ReLU, then a hidden
    layer of ``features`` units (the paper's ST-CNN localisation nets are small CNNs of this kind); the
    ``SpatialTransformer`` adds the regression layer to theta."""

    def __init__(self, input_size: int = 42, channels: int = 1, width: int = 20, features: int = 50):
        super().__init__()
        convolutions = nn.Sequential(
            nn.MaxPool2d(2), nn.Conv2d(channels, width, 5), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, width, 5), nn.ReLU(), nn.Flatten())
        self.net = nn.Sequential(convolutions, nn.Linear(_flat_size(convolutions, input_size, channels), features),
                                 nn.ReLU())
        self.features = features

    def forward(self, U):
        return self.net(U)


class CNN(nn.Module):
    """The baseline classifier of the paper's Table 1: two 5 x 5 convolutions, each followed by max pooling, then
    an optional hidden layer of ``hidden`` ReLU units (with dropout), and a softmax layer over the classes (returns
    logits)."""

    def __init__(self, input_size: int = 42, channels: int = 1, widths: Sequence[int] = (32, 64), hidden: int = 0,
                 dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        for n_in, n_out in zip([channels, *widths[:-1]], widths):
            layers += [nn.Conv2d(n_in, n_out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
        body = nn.Sequential(*layers, nn.Flatten())
        flat = _flat_size(body, input_size, channels)
        head: list[nn.Module] = [nn.Linear(flat, hidden), nn.ReLU()] if hidden else []
        self.net = nn.Sequential(body, *head, nn.Dropout(dropout), nn.Linear(hidden or flat, num_classes))

    def forward(self, x):
        return self.net(x)


class FCN(nn.Module):
    """The paper's fully connected baseline (Table 1, FCN): hidden ReLU layers on the flattened image and a softmax
    layer (returns logits). The default widths keep its parameters near the CNN's on 42 x 42 inputs."""

    def __init__(self, input_size: int = 42, channels: int = 1, hidden: Sequence[int] = (64, 64),
                 num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip([channels * input_size ** 2, *hidden[:-1]], hidden):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden[-1] if hidden else channels * input_size ** 2,
                                                    num_classes))

    def forward(self, x):
        return self.net(x)


class LocalisationFCN(nn.Module):
    """f_loc's body as a fully connected net (the paper's ST-FCN): one hidden ReLU layer of ``features`` units on
    the flattened image; the ``SpatialTransformer`` adds the regression layer to theta."""

    def __init__(self, input_size: int = 42, channels: int = 1, features: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * input_size ** 2, features), nn.ReLU())
        self.features = features

    def forward(self, U):
        return self.net(U)
