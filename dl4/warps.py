"""The geometry of spatial transformers (Jaderberg et al. 2015, sec. 3.2-3.3), shared by the ST layer
(``lightning_models/nn/stn.py``) and the distorted-MNIST data that warps its digits with it
(``datamodules/distorted_mnist.py``).

    (x^s_i, y^s_i) = T_theta(G_i)                      the grid generator, for every target pixel G_i   (eq. 1)
    V_i = sum_n sum_m U_nm max(0, 1 - |x^s_i - m|) max(0, 1 - |y^s_i - n|)   the bilinear sampler       (eq. 5)

Coordinates are normalised to [-1, 1] over the image with ``align_corners=False`` (``ALIGN_CORNERS``): pixel i of W
lies at (2i + 1)/W - 1.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ALIGN_CORNERS = False


def target_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """G: the normalised (x^t, y^t) of every output pixel centre, (H * W, 2), row by row (the identity's grid)."""
    identity = torch.eye(2, 3, device=device, dtype=dtype).unsqueeze(0)
    return F.affine_grid(identity, [1, 1, height, width], align_corners=ALIGN_CORNERS).view(-1, 2)


def affine_grid(theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(x^s, y^s)^T = A_theta (x^t, y^t, 1)^T with A_theta (B, 2, 3) (eq. 1); returns the grid (B, H', W', 2)."""
    return F.affine_grid(theta, list(size), align_corners=ALIGN_CORNERS)


def projective_grid(theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A homography: (x', y', w')^T = H_theta (x^t, y^t, 1)^T, (x^s, y^s) = (x'/w', y'/w') (sec. 3.2's "more
    constrained and general" transforms). ``theta`` (B, 8) holds H's first 8 entries row by row; h_33 = 1.
    Returns the grid (B, H', W', 2)."""
    B, _, height, width = size
    H = torch.cat([theta, theta.new_ones(B, 1)], dim=1).view(B, 3, 3)
    G = target_grid(height, width, theta.device, theta.dtype)
    G = torch.cat([G, G.new_ones(len(G), 1)], dim=1)  # homogeneous target coordinates (H'W', 3)
    source = G @ H.transpose(1, 2)  # (B, H'W', 3)
    return (source[..., :2] / source[..., 2:]).view(B, height, width, 2)


def bilinear_sample(U: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """V_i = sum_n sum_m U_nm max(0, 1 - |x^s_i - m|) max(0, 1 - |y^s_i - n|) (eq. 5), U = 0 outside the image;
    differentiable in U and in the sampling coordinates (eqs. 6-7)."""
    return F.grid_sample(U, grid, mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS)
