"""Distorted MNIST: the warp's parameters stay in their ranges and are what the digits show, the projective,
elastic and clutter warps do what they say, the fixed sets are the same for the same seed, training batches are
distorted afresh, and bad settings say which key."""

import pytest
import torch

from datamodules import DistortedMNISTDataModule
from datamodules.distorted_mnist import (clutter, distortion_parameters, elastic_grid, homography, place,
                                        placement_theta, projective_theta)
from lightning_models.nn.stn import affine_scale_rotation, projective_grid, target_grid


def test_rts_parameters_lie_in_their_ranges_and_are_the_warps_scale_and_rotation():
    g = torch.Generator().manual_seed(0)
    angle, scale, centre = distortion_parameters(5000, "rts", 45.0, (0.7, 1.2), 42, g)
    assert angle.abs().max() <= 45 and angle.abs().max() > 44  # the whole range is used
    assert scale.min() >= 0.7 and scale.max() <= 1.2 and scale.max() - scale.min() > 0.49
    assert ((centre.abs() <= 1 - 28 * scale.unsqueeze(1) / 42 + 1e-6).all())  # the digit's box stays on the canvas
    # the theta that places the digit samples the digit at 42 / (28 s) and rotates by -angle: read them back
    theta_scale, theta_rotation = affine_scale_rotation(placement_theta(angle, scale, centre, 42).flatten(1))
    torch.testing.assert_close(theta_scale, 42 / (28 * scale))
    torch.testing.assert_close(theta_rotation, -angle, atol=1e-3, rtol=0)


def test_a_centred_unrotated_digit_at_scale_28_over_42_is_the_digit_pasted_in_the_middle():
    x = torch.rand(2, 1, 28, 28)
    theta = placement_theta(torch.zeros(2), torch.ones(2), torch.zeros(2, 2), 42)
    canvas = place(x, theta, 42)
    torch.testing.assert_close(canvas[:, :, 7:35, 7:35], x, atol=1e-5, rtol=0)
    assert canvas[:, :, :7].abs().max() == 0 and canvas[:, :, 35:].abs().max() == 0


def test_r_rotates_within_plus_minus_90_and_keeps_28_pixels():
    angle, scale, centre = distortion_parameters(2000, "r", 90.0, (0.7, 1.2), 28, torch.Generator().manual_seed(1))
    assert angle.abs().max() <= 90 and (scale == 1).all() and (centre == 0).all()


def apply_homography(theta, points):
    H = torch.cat([theta, torch.ones(len(theta), 1)], 1).view(-1, 3, 3)
    q = torch.cat([points, torch.ones(*points.shape[:2], 1)], -1) @ H.transpose(1, 2)
    return q[..., :2] / q[..., 2:]


def test_the_homography_maps_each_target_corner_onto_its_source_corner():
    g = torch.Generator().manual_seed(0)
    source, target = torch.rand(100, 4, 2, generator=g) * 2 - 1, torch.rand(100, 4, 2, generator=g) * 2 - 1
    source, target = source.double(), target.double()
    torch.testing.assert_close(apply_homography(homography(source, target), target), source)


def test_p_without_noise_is_a_centred_scale_and_its_corners_move_by_corner_std_pixels():
    theta = projective_theta(4, (1.0, 1.0), 0.0, 28)
    grid = projective_grid(theta, (4, 1, 28, 28))
    torch.testing.assert_close(grid, target_grid(28, 28).view(1, 28, 28, 2).expand(4, 28, 28, 2))
    # the inverse of each sampling homography places the digit's corners: their offsets from the scaled square
    theta = projective_theta(5000, (1.0, 1.0), 5.0, 28, torch.Generator().manual_seed(0)).double()
    corners = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64).expand(5000, 4, 2)
    H = torch.cat([theta, torch.ones(5000, 1, dtype=theta.dtype)], 1).view(-1, 3, 3)
    inverse = torch.linalg.inv(H)
    q = torch.cat([corners, torch.ones(5000, 4, 1, dtype=theta.dtype)], -1) @ inverse.transpose(1, 2)
    offset_pixels = (q[..., :2] / q[..., 2:] - corners) * 28 / 2
    assert abs(offset_pixels.std().item() - 5.0) < 0.1 and abs(offset_pixels.mean().item()) < 0.1


def test_e_is_the_identity_at_alpha_0_and_moves_pixels_by_a_few_pixels_at_simards_values():
    identity = target_grid(28, 28).view(1, 28, 28, 2)
    torch.testing.assert_close(elastic_grid(3, 0.0, 4.0, 28), identity.expand(3, 28, 28, 2))
    displacement = (elastic_grid(500, 34.0, 4.0, 28, torch.Generator().manual_seed(0)) - identity) * 28 / 2
    typical = displacement.abs().mean().item()
    assert 0.3 < typical < 3  # smooth: a pixel or so, not the per-pixel noise of U(-34, 34)
    neighbours = (displacement[:, 1:] - displacement[:, :-1]).abs().mean().item()
    assert neighbours < typical / 4  # a smooth field: neighbours move together


def test_tc_clutter_pieces_are_crops_of_other_digits_copied_at_whole_pixels():
    x = torch.zeros(6, 1, 28, 28)
    x[:, :, 4:24, 4:24] = torch.arange(1.0, 7.0).view(6, 1, 1, 1)  # digit i is a square of value i + 1
    out = clutter(x, 60, 1, 8, torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 60, 60)
    for canvas in out:
        rows, cols = canvas[0].nonzero().unbind(1)
        if len(rows):  # a crop of the square's inside is a block of one digit's value, at most 8 x 8
            assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
            values = canvas.round(decimals=4).unique()  # copied to float precision
            assert len(values) == 2 and values[1] in torch.arange(1.0, 7.0)
    ones = torch.ones(4, 1, 28, 28)
    torch.testing.assert_close(clutter(ones, 60, 1, 8).sum((1, 2, 3)), torch.full((4,), 64.0))  # one 8 x 8 piece


@pytest.mark.parametrize("distortion, side", [("p", 28), ("e", 28), ("tc", 60)])
def test_p_e_and_tc_batches(distortion, side, mnist_root):
    dm = DistortedMNISTDataModule(distortion, data_dir=str(mnist_root), download=False, on_device=False)
    dm.setup()
    x, _ = dm.fixed_batch(64)
    assert x.shape == (64, 1, side, side) and 0 <= x.min() and x.max() <= 1
    assert (x.sum((1, 2, 3)) > 20).float().mean() > 0.95  # the digits are still there (P shrinks a rare one a lot)
    digits = dm.val_set.tensors[0]
    again = DistortedMNISTDataModule(distortion, data_dir=str(mnist_root), download=False, on_device=False)
    again.setup()
    assert torch.equal(again.val_set.tensors[0], digits)  # distorted once, from the seed


@pytest.fixture(scope="module")
def rts(mnist_root):
    dm = DistortedMNISTDataModule("rts", data_dir=str(mnist_root), download=False, on_device=False)
    dm.setup()
    return dm


def test_fixed_sets_are_identical_for_the_same_seed_and_are_distorted(rts, mnist_root):
    again = DistortedMNISTDataModule("rts", data_dir=str(mnist_root), download=False, on_device=False)
    again.setup()
    for name in ("val_set", "test_set"):
        assert torch.equal(getattr(rts, name).tensors[0], getattr(again, name).tensors[0])
    x, y = rts.fixed_batch(64)
    assert x.shape == (64, 1, 42, 42) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert x.sum((1, 2, 3)).min() > 20  # every digit is still (mostly) on the canvas
    other = DistortedMNISTDataModule("rts", data_dir=str(mnist_root), download=False, on_device=False, seed=1)
    other.setup()
    assert not torch.equal(other.test_set.tensors[0], rts.test_set.tensors[0])


def test_training_batches_are_distorted_afresh(rts):
    class Training:  # what on_after_batch_transfer reads of the trainer
        training = True

    rts.trainer = Training()
    try:
        batch = rts.train_set.__getitems__(list(range(16)))
        first, _ = rts.on_after_batch_transfer(batch, 0)
        second, _ = rts.on_after_batch_transfer(batch, 0)
    finally:
        rts.trainer = None
    assert first.shape == (16, 1, 42, 42) and not torch.equal(first, second)


def test_bad_settings_name_their_key():
    with pytest.raises(ValueError, match="data.distortion"):
        DistortedMNISTDataModule("x")
    with pytest.raises(ValueError, match="data.projective_scale_range"):
        DistortedMNISTDataModule("p", projective_scale_range=(0, 1))
    with pytest.raises(ValueError, match="data.elastic_sigma"):
        DistortedMNISTDataModule("e", elastic_sigma=0)
    with pytest.raises(ValueError, match="data.clutter_size"):
        DistortedMNISTDataModule("tc", clutter_size=30)
    with pytest.raises(ValueError, match="data.canvas"):
        DistortedMNISTDataModule("p", canvas=42)
    with pytest.raises(ValueError, match="data.scale_range"):
        DistortedMNISTDataModule("rts", scale_range=(1.2, 0.7))
    with pytest.raises(ValueError, match="data.canvas"):
        DistortedMNISTDataModule("rts", canvas=20)
