"""Distorted MNIST (Jaderberg et al. 2015, sec. 4.1 and appendix A.1): the digits the spatial transformer learns
to undo. **R** (rotated), **RTS** (rotated, translated and scaled on a 42 x 42 canvas), **P** (projective),
**E** (elastic) and **TC** (translated and cluttered, 60 x 60).

Each distortion warps a whole batch on the batch's device with the STN's own grid generators and sampler
(``lightning_models.nn.stn``): one grid and one ``F.grid_sample`` call per batch, never a loop over images.
Training digits are distorted afresh in every batch (the generator is the global one, seeded by
``seed_everything``); validation and test digits are distorted once in ``setup`` from the datamodule's seed on the
CPU generator, so their numbers compare across runs and machines.
"""

import math
from typing import Literal

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from datamodules.mnist import MNISTDataModule
from datamodules.tensors import TensorBatchDataset
from dl4.errors import ConfigError
from dl4.warps import affine_grid, bilinear_sample, projective_grid, target_grid

Distortion = Literal["r", "rts", "p", "e", "tc"]
CANVAS = {"rts": 42, "tc": 60}  # the paper's canvases; the others stay 28 x 28


def _uniform(low, high, shape, generator, device):
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def distortion_parameters(n: int, distortion: Distortion, max_rotation: float, scale_range: tuple[float, float],
                          canvas: int, generator: torch.Generator | None = None, device=None):
    """Per image: the rotation (degrees), the scale (digit side / 28) and the digit's centre on the canvas
    (normalised x, y in [-1, 1]). R: rotation only. RTS: rotation, scale, and a position that keeps the unrotated
    digit's box inside the canvas. TC: a position only."""
    if distortion == "tc":
        angle, scale = torch.zeros(n, device=device), torch.ones(n, device=device)
    else:
        angle = _uniform(-max_rotation, max_rotation, (n,), generator, device)
        if distortion == "r":
            return angle, torch.ones(n, device=device), torch.zeros(n, 2, device=device)
        scale = _uniform(*scale_range, (n,), generator, device)
    room = (1 - 28 * scale / canvas).clamp_min(0)  # how far the centre may move, in normalised canvas units
    centre = _uniform(-1.0, 1.0, (n, 2), generator, device) * room.unsqueeze(1)
    return angle, scale, centre


def placement_theta(angle: torch.Tensor, scale: torch.Tensor, centre: torch.Tensor, canvas: int) -> torch.Tensor:
    """The affine theta (B, 2, 3) that samples the 28 x 28 digit for every canvas pixel p:
    q = (canvas / (28 s)) R(-angle) (p - centre), the digit rotated by ``angle``, scaled by s, moved to ``centre``."""
    a = angle * math.pi / 180
    k = canvas / (28 * scale)
    cos, sin = torch.cos(a) * k, torch.sin(a) * k
    A = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # k R(-a)
    return torch.cat([A, -(A @ centre.unsqueeze(-1))], dim=-1)


def place(x: torch.Tensor, theta: torch.Tensor, canvas: int) -> torch.Tensor:
    """Warp digits x (B, 1, 28, 28) onto canvases (B, 1, canvas, canvas): one affine_grid, one grid_sample."""
    return bilinear_sample(x, affine_grid(theta, (len(x), x.shape[1], canvas, canvas)))  # the STN's own warp


def homography(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The homographies (B, 8; h_33 = 1) that map 4 target points (B, 4, 2) onto 4 source points (B, 4, 2):
    u = (h11 x + h12 y + h13) / (h31 x + h32 y + 1), v likewise; two rows of the 8 x 8 linear system per point."""
    x, y = target.unbind(-1)
    u, v = source.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    A = torch.cat([rows_u, rows_v], dim=1)  # (B, 8, 8)
    return torch.linalg.solve(A, torch.cat([u, v], dim=1))


def projective_theta(n: int, scale_range: tuple[float, float], corner_std: float, size: int,
                     generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """P: the digit scaled by U(scale_range) about the centre, then each of its 4 corners moved by Gaussian noise of
    ``corner_std`` pixels; returns the sampling homographies (B, 8), canvas -> digit, for ``projective_grid``.
    A draw whose corners are not a clearly convex quadrilateral (every interior angle under 150 degrees) is drawn
    again: at 5 pixels about one in 12 is, and a homography through such corners sends a corner near infinity
    and folds the digit away."""
    corners = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], device=device).expand(n, 4, 2)
    scale = _uniform(*scale_range, (n, 1, 1), generator, device)
    placed = corners * scale
    todo = torch.ones(n, dtype=torch.bool, device=device)
    for _ in range(100):  # each round redraws the bad ones; after a few none is left
        noise = torch.randn((n, 4, 2), generator=generator, device=device) * (2 * corner_std / size)
        placed = torch.where(todo[:, None, None], corners * scale + noise, placed)
        todo = ~clearly_convex(placed)
        if not todo.any():
            break
    return homography(corners, placed)


def clearly_convex(quad: torch.Tensor, max_angle: float = 150.0) -> torch.Tensor:
    """Whether each quadrilateral (B, 4, 2), corners in order, is convex with every interior angle < max_angle."""
    edge = quad.roll(-1, dims=1) - quad
    nxt = edge.roll(-1, dims=1)
    cross = edge[..., 0] * nxt[..., 1] - edge[..., 1] * nxt[..., 0]
    turn = torch.atan2(cross, (edge * nxt).sum(-1)) * 180 / math.pi  # the exterior angle at each corner
    return ((turn > 180 - max_angle) & (turn > 0)).all(1)


def projective_warp(x: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Warp x (B, C, h, w) to (B, C, size, size) by the homographies theta (B, 8): ``projective_grid`` and the
    sampler, with nothing seen beyond the horizon (w' <= 0, where a homography would show the digit mirrored)."""
    grid = projective_grid(theta, (len(x), x.shape[1], size, size))
    G = target_grid(size, size, x.device)
    w = 1 + G @ theta[:, 6:].T  # (size * size, B): the third homogeneous coordinate of every target pixel
    grid = grid.masked_fill((w <= 0).T.reshape(len(x), size, size, 1), 2.0)  # 2: outside the image, sampled as 0
    # w' rounding to 0 gives inf (or 0/0), which grid_sample turns into NaN: such points are outside, too
    return bilinear_sample(x, grid.nan_to_num(2.0, 2.0, -2.0))


def elastic_grid(n: int, alpha: float, sigma: float, size: int, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """E (Simard et al. 2003): a displacement field U(-1, 1) per pixel, smoothed by a Gaussian of ``sigma`` pixels
    and scaled by ``alpha`` pixels, added to the identity grid; (B, size, size, 2)."""
    field = _uniform(-1.0, 1.0, (n, 2, size, size), generator, device)
    field = gaussian_blur(field, [2 * math.ceil(3 * sigma) + 1] * 2, [sigma, sigma]) * (2 * alpha / size)
    return target_grid(size, size, field.device).view(1, size, size, 2) + field.permute(0, 2, 3, 1)


def clutter(x: torch.Tensor, canvas: int, pieces: int, piece_size: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """TC's clutter (Mnih et al. 2014): ``pieces`` random piece_size x piece_size crops of other digits of the batch
    (B, 1, 28, 28), each at a random whole-pixel place of the canvas; (B, 1, canvas, canvas), all pieces of the batch
    cut and placed by one grid_sample (a pure translation, so the crops are copied exactly)."""
    B, k = len(x), piece_size
    where = generator.device if generator is not None else x.device
    other = torch.stack([torch.randperm(B, generator=generator, device=where) for _ in range(pieces)]).flatten()
    crop = torch.randint(0, 28 - k + 1, (pieces * B, 2), generator=generator, device=where).to(x.device)
    put = torch.randint(0, canvas - k + 1, (pieces * B, 2), generator=generator, device=where).to(x.device)
    # canvas pixel P -> digit pixel P - put + crop; in normalised coordinates (align_corners=False):
    # u = (x + 1) canvas / 28 + 2 (crop - put) / 28 - 1
    A = torch.eye(2, device=x.device).expand(pieces * B, 2, 2) * (canvas / 28)
    t = canvas / 28 + 2 * (crop - put).float() / 28 - 1
    pieces_canvas = place(x[other.to(x.device)], torch.cat([A, t.unsqueeze(-1)], dim=-1), canvas)
    pixel = torch.arange(canvas, device=x.device)
    inside = [(pixel >= put[:, i, None]) & (pixel < put[:, i, None] + k) for i in (1, 0)]  # rows (y), columns (x)
    window = (inside[0][:, :, None] & inside[1][:, None, :]).unsqueeze(1)
    return (pieces_canvas * window).view(pieces, B, 1, canvas, canvas).amax(0)


class DistortedMNISTDataModule(MNISTDataModule):
    """MNIST with the paper's distortions; batches are ``(x, y)``, x float in [0, 1] of shape (B, 1, S, S) with
    S = ``canvas`` (28 for R, P and E, 42 for RTS, 60 for TC).

    Args:
        distortion: ``r``, ``rts``, ``p``, ``e`` or ``tc`` (the paper's appendix A.1; where it leaves a value
            open, the choice is said):
            R: rotation U(-90, 90). RTS: rotation U(-45, 45), scale U(0.7, 1.2), a random place on a 42 x 42
            canvas. P: scale U(0.75, 1), then each corner moved by N(0, 5 pixels), a projective warp.
            E: an elastic distortion. TC: the digit at a random place of a 60 x 60 canvas with ``clutter_pieces``
            crops of other digits.
        max_rotation: the rotation range's bound in degrees (default 90 for R, 45 for RTS).
        scale_range: RTS's digit scale range.
        projective_scale_range, corner_std: P's scale range and the corners' noise in pixels.
        elastic_alpha, elastic_sigma: E's displacement scale and smoothing in pixels. The paper does not restate
            them; the defaults are Simard et al.'s (2003) values for MNIST, alpha 34 and sigma 4.
        clutter_pieces, clutter_size: TC's clutter; the defaults are the 60 x 60 protocol of Mnih et al. (2014),
            whose dataset the paper's TC follows: 4 pieces of 8 x 8.
        canvas: the side of RTS's and TC's canvas in pixels (default 42 and 60).
        predict_path: ``dl4 predict``'s input: a folder of digit images (or one), made grey and ``canvas`` square.
        The other arguments are ``MNISTDataModule``'s (grey levels; 55,000 / 5,000 seeded split by default).
    """

    def __init__(self, distortion: Distortion = "rts", max_rotation: float | None = None,
                 scale_range: tuple[float, float] = (0.7, 1.2),
                 projective_scale_range: tuple[float, float] = (0.75, 1.0), corner_std: float = 5.0,
                 elastic_alpha: float = 34.0, elastic_sigma: float = 4.0, clutter_pieces: int = 4,
                 clutter_size: int = 8, canvas: int | None = None, data_dir: str | None = None,
                 batch_size: int = 256, eval_batch_size: int = 1000, val_size: int = 5000, download: bool = True,
                 seed: int = 0, on_device: bool = True, predict_path: str | None = None):
        super().__init__(data_dir, batch_size, eval_batch_size, val_size, "random", "none", download, seed, on_device,
                         predict_path)
        if distortion not in ("r", "rts", "p", "e", "tc"):
            raise ConfigError(f"data.distortion must be one of r, rts, p, e, tc, got {distortion!r}")
        for key, (low, high) in (("scale_range", scale_range), ("projective_scale_range", projective_scale_range)):
            if not 0 < low <= high:
                raise ConfigError(f"data.{key} must be (low, high) with 0 < low <= high, got {[low, high]}")
        if min(corner_std, elastic_alpha, elastic_sigma) < 0 or elastic_sigma == 0:
            raise ConfigError("data.corner_std, data.elastic_alpha must be >= 0 and data.elastic_sigma > 0")
        if clutter_pieces < 0 or not 1 <= clutter_size <= 28:
            raise ConfigError(f"data.clutter_pieces must be >= 0 and data.clutter_size 1-28, got {clutter_pieces}, "
                             f"{clutter_size}")
        if canvas is not None and distortion not in CANVAS:
            raise ConfigError(f"data.canvas is for rts and tc; {distortion} keeps the 28 x 28 digit")
        self.canvas = canvas if canvas is not None else CANVAS.get(distortion, 28)
        if self.canvas < 28:
            raise ConfigError(f"data.canvas must be at least 28 pixels, got {self.canvas}")
        self.distortion, self.scale_range = distortion, tuple(scale_range)
        self.max_rotation = max_rotation if max_rotation is not None else (90.0 if distortion == "r" else 45.0)
        self.projective_scale_range, self.corner_std = tuple(projective_scale_range), corner_std
        self.elastic_alpha, self.elastic_sigma = elastic_alpha, elastic_sigma
        self.clutter_pieces, self.clutter_size = clutter_pieces, clutter_size

    def distort(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Digits (B, 1, 28, 28) in [0, 1] -> distorted (B, 1, S, S), parameters drawn from ``generator``."""
        where = generator.device if generator is not None else x.device  # a CPU generator: the same sets everywhere
        n, S = len(x), self.canvas
        if self.distortion == "p":
            theta = projective_theta(n, self.projective_scale_range, self.corner_std, S, generator, where)
            return projective_warp(x, theta.to(x.device), S)
        if self.distortion == "e":
            grid = elastic_grid(n, self.elastic_alpha, self.elastic_sigma, S, generator, where)
            return bilinear_sample(x, grid.to(x.device))
        params = distortion_parameters(n, self.distortion, self.max_rotation, self.scale_range, S, generator, where)
        canvas = place(x, placement_theta(*params, S).to(x.device), S)
        if self.distortion == "tc" and self.clutter_pieces:
            canvas = torch.maximum(canvas, clutter(x, S, self.clutter_pieces, self.clutter_size, generator))
        return canvas

    @property
    def image_size(self) -> int:
        return self.canvas

    def setup(self, stage: str | None = None):
        if self.train_set is not None or self.own_inputs():
            return super().setup(stage)
        super().setup(stage)
        g = torch.Generator().manual_seed(self.seed + 1)
        for name in ("val_set", "test_set"):  # distorted once, from the seed, stored as uint8 like the rest
            x, y = getattr(self, name).tensors
            warped = torch.cat([self.distort(chunk.float() / 255, g) for chunk in x.split(2000)])
            setattr(self, name, TensorBatchDataset((warped * 255).round().to(torch.uint8), y))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.trainer is not None and self.trainer.training:
            x = self.distort(x)  # a fresh distortion every batch, on the batch's device
        return x, y
