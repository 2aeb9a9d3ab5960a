"""The spatial transformer's blocks against the slides' formulas: the bilinear sampler (eq. 5) and its gradient,
identities, a known translation, the TPS interpolation, and bad settings."""

import math

import pytest
import torch
from torch import nn

from lightning_models.nn.stn import (CNN, FCN, LocalisationCNN, LocalisationFCN, SpatialTransformer, TPSGridGenerator,
                                     affine_grid, affine_scale_rotation, bilinear_sample, control_points,
                                     identity_theta, projective_grid)


def slide_sampler(U: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """V_i = sum_n sum_m U_nm max(0, 1 - |x_i - m|) max(0, 1 - |y_i - n|), written out, with (x_i, y_i) the
    normalised grid in pixel units (align_corners=False: x = ((x_norm + 1) W - 1) / 2)."""
    B, C, H, W = U.shape
    x = ((grid[..., 0] + 1) * W - 1) / 2  # (B, H', W')
    y = ((grid[..., 1] + 1) * H - 1) / 2
    m = torch.arange(W, dtype=U.dtype).view(1, 1, 1, 1, W)
    n = torch.arange(H, dtype=U.dtype).view(1, 1, 1, H, 1)
    kx = (1 - (x[..., None, None] - m).abs()).clamp_min(0)  # (B, H', W', 1, W)
    ky = (1 - (y[..., None, None] - n).abs()).clamp_min(0)  # (B, H', W', H, 1)
    weights = kx * ky  # (B, H', W', H, W)
    return torch.einsum("bpqnm,bcnm->bcpq", weights, U)


def test_bilinear_sampler_is_the_slides_formula():
    g = torch.Generator().manual_seed(0)
    U = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64)
    grid = torch.rand(2, 4, 7, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2  # some points outside the image
    torch.testing.assert_close(bilinear_sample(U, grid), slide_sampler(U, grid), atol=1e-5, rtol=0)


def test_sampler_gradient_with_respect_to_the_sampling_coordinates_matches_finite_differences():
    """The slide's dV/dx^s: bilinear sampling is piecewise linear in x^s, differentiable away from pixel centres."""
    g = torch.Generator().manual_seed(1)
    U = torch.rand(1, 2, 5, 5, generator=g, dtype=torch.float64)
    grid = (torch.rand(1, 3, 3, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: bilinear_sample(U, q), (grid,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("transform", ["affine", "projective", "tps"])
def test_untrained_transformer_passes_its_input_through(transform):
    body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU())
    st = SpatialTransformer(body, 8, transform, size=(8, 8), tps_grid=(3, 3))
    U = torch.rand(4, 1, 8, 8)
    V, theta = st(U)
    torch.testing.assert_close(V, U, atol=1e-5, rtol=0)
    torch.testing.assert_close(theta, identity_theta(transform, (3, 3)).expand(4, -1))


def test_affine_translation_moves_the_image_by_whole_pixels():
    U = torch.zeros(1, 1, 8, 8)
    U[0, 0, 3, 2] = 1.0
    theta = torch.tensor([[[1.0, 0, 2 * 2 / 8], [0, 1, -2 * 1 / 8]]])  # sample 2 pixels right and 1 up of each target
    V = bilinear_sample(U, affine_grid(theta, (1, 1, 8, 8)))
    assert V[0, 0, 4, 0] == pytest.approx(1.0) and V.sum() == pytest.approx(1.0)  # the pixel moved 2 left, 1 down


def test_projective_with_an_affine_homography_equals_the_affine_grid():
    theta = torch.tensor([[0.9, 0.2, 0.1, -0.1, 1.1, 0.05]])
    homography = torch.cat([theta, torch.zeros(1, 2)], dim=1)
    expected = affine_grid(theta.view(1, 2, 3), (1, 1, 6, 7))
    torch.testing.assert_close(projective_grid(homography, (1, 1, 6, 7)), expected)


def test_projective_divides_by_the_third_coordinate():
    theta = torch.tensor([[1.0, 0, 0, 0, 1, 0, 0.5, 0]])  # w' = 1 + 0.5 x
    grid = projective_grid(theta, (1, 1, 2, 2))
    x_t = torch.tensor([-0.5, 0.5])
    torch.testing.assert_close(grid[0, 0, :, 0], x_t / (1 + 0.5 * x_t))


def test_tps_maps_every_control_point_onto_its_target_and_is_the_identity_when_undisplaced():
    tps = TPSGridGenerator((4, 4), (28, 28))
    P = control_points(4, 4)
    identity = affine_grid(torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]), (1, 1, 28, 28))
    torch.testing.assert_close(tps(P.flatten()[None]), identity, atol=1e-5, rtol=0)
    targets = P + 0.2 * torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tps.basis(P) @ targets, targets, atol=1e-5, rtol=0)


def test_affine_scale_and_rotation_are_read_back():
    s, a = 0.6, math.radians(30)
    theta = torch.tensor([[s * math.cos(a), -s * math.sin(a), 0.1, s * math.sin(a), s * math.cos(a), 0]])
    scale, rotation = affine_scale_rotation(theta)
    assert scale.item() == pytest.approx(0.6) and rotation.item() == pytest.approx(30.0)


def test_under_bfloat16_autocast_the_grid_and_the_sampling_stay_float32():
    torch.manual_seed(0)
    st = SpatialTransformer(LocalisationCNN(42), 50, "affine", (28, 28))
    with torch.no_grad():
        st.regression.bias.copy_(torch.tensor([0.7, 0.2, 0.013, -0.2, 0.7, -0.021]))
    U = torch.rand(4, 1, 42, 42)
    exact, theta = st(U)
    with torch.autocast("cpu", torch.bfloat16):
        V, theta_mixed = st(U)
    assert theta_mixed.dtype == torch.float32 and V.dtype == torch.float32
    # theta comes out of bfloat16 layers (a few thousandths off); the sampling of that theta is float32's
    torch.testing.assert_close(V, bilinear_sample(U, st.grid(theta_mixed, 1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(V, exact, atol=0.05, rtol=0)


@pytest.mark.parametrize("net, size", [(CNN(42), 42), (CNN(28, hidden=64, dropout=0.5), 28), (FCN(42), 42),
                                       (FCN(28, hidden=()), 28)])
def test_classifiers_give_logits_for_their_input_size(net, size):
    assert net(torch.rand(3, 1, size, size)).shape == (3, 10)


@pytest.mark.parametrize("body", [LocalisationCNN(60), LocalisationFCN(60)])
def test_localisation_bodies_give_their_features(body):
    assert body(torch.rand(2, 1, 60, 60)).shape == (2, body.features)


def test_bad_settings_fail_with_the_name_of_what_is_wrong():
    body = nn.Flatten()
    with pytest.raises(ValueError, match="SpatialTransformer transform must be affine, projective or tps, got 'similarity'"):
        SpatialTransformer(body, 4, "similarity")
    with pytest.raises(ValueError, match="SpatialTransformer tps_grid must be at least 2 x 2"):
        SpatialTransformer(body, 4, "tps", tps_grid=(1, 4))
    with pytest.raises(ValueError, match="SpatialTransformer size"):
        SpatialTransformer(body, 4, "affine", size=(0, 28))
