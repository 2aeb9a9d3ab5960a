"""Distorted MNIST (Jaderberg et al. 2015, sec. 4.1 and appendix A.1): the digits the spatial transformer learns
to undo. So far **R** (rotated) and **RTS** (rotated, translated and scaled on a 42 x 42 canvas); P, E and TC are
to come (issue 14).

Each distortion is one affine warp per image, applied to a whole batch with one ``F.affine_grid`` and one
``F.grid_sample`` call on the batch's device. Training digits are distorted afresh in every batch (the generator is
the global one, seeded by ``seed_everything``); validation and test digits are distorted once in ``setup`` from the
datamodule's seed, so their numbers compare across runs and machines.
"""

import math
from typing import Literal

import torch

from datamodules.mnist import MNISTDataModule
from datamodules.tensors import TensorBatchDataset
from lightning_models.nn.stn import affine_grid, bilinear_sample

Distortion = Literal["r", "rts"]


def distortion_parameters(n: int, distortion: Distortion, max_rotation: float, scale_range: tuple[float, float],
                          canvas: int, generator: torch.Generator | None = None, device=None):
    """Per image: the rotation (degrees), the scale (digit side / 28) and the digit's centre on the canvas
    (normalised x, y in [-1, 1]). R: rotation only. RTS: rotation, scale, and a position that keeps the unrotated
    digit's box inside the canvas."""
    def uniform(low, high, shape=(n,)):
        return low + (high - low) * torch.rand(shape, generator=generator, device=device)

    angle = uniform(-max_rotation, max_rotation)
    if distortion == "r":
        return angle, torch.ones(n, device=device), torch.zeros(n, 2, device=device)
    scale = uniform(*scale_range)
    room = (1 - 28 * scale / canvas).clamp_min(0)  # how far the centre may move, in normalised canvas units
    centre = uniform(-1.0, 1.0, (n, 2)) * room.unsqueeze(1)
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


class DistortedMNISTDataModule(MNISTDataModule):
    """MNIST with the paper's distortions; batches are ``(x, y)``, x float in [0, 1] of shape (B, 1, S, S) with
    S = 28 for R and ``canvas`` (42) for RTS.

    Args:
        distortion: ``r`` (rotation U(-90, 90)) or ``rts`` (rotation U(-45, 45), scale U(0.7, 1.2), placed at a
            random position of a 42 x 42 canvas), as in the paper's appendix A.1.
        max_rotation: the rotation range's bound in degrees (default 90 for R, 45 for RTS).
        scale_range: RTS's digit scale range.
        canvas: RTS's canvas side in pixels.
        The other arguments are ``MNISTDataModule``'s (grey levels; 55,000 / 5,000 seeded split by default).
    """

    def __init__(self, distortion: Distortion = "rts", max_rotation: float | None = None,
                 scale_range: tuple[float, float] = (0.7, 1.2), canvas: int = 42, data_dir: str | None = None,
                 batch_size: int = 256, eval_batch_size: int = 1000, val_size: int = 5000, download: bool = True,
                 seed: int = 0, on_device: bool = True):
        super().__init__(data_dir, batch_size, eval_batch_size, val_size, "random", "none", download, seed, on_device)
        if distortion not in ("r", "rts"):
            raise ValueError(f"data.distortion must be r or rts (p, e and tc are not built yet), got {distortion!r}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"data.scale_range must be (low, high) with 0 < low <= high, got {list(scale_range)}")
        if canvas < 28:
            raise ValueError(f"data.canvas must be at least 28 pixels, got {canvas}")
        self.distortion, self.scale_range = distortion, tuple(scale_range)
        self.max_rotation = max_rotation if max_rotation is not None else (90.0 if distortion == "r" else 45.0)
        self.canvas = 28 if distortion == "r" else canvas

    def distort(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Digits (B, 1, 28, 28) in [0, 1] -> distorted (B, 1, S, S), parameters drawn from ``generator``."""
        where = generator.device if generator is not None else x.device  # a CPU generator: the same sets everywhere
        params = distortion_parameters(len(x), self.distortion, self.max_rotation, self.scale_range, self.canvas,
                                       generator, where)
        return place(x, placement_theta(*params, self.canvas).to(x.device), self.canvas)

    def setup(self, stage: str | None = None):
        if self.train_set is not None:
            return
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
