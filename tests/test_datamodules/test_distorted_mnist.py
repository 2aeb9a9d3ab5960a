"""Distorted MNIST: the warp's parameters stay in their ranges and are what the digits show, the fixed sets are
the same for the same seed, training batches are distorted afresh, and bad settings say which key."""

import pytest
import torch

from datamodules import DistortedMNISTDataModule
from datamodules.distorted_mnist import distortion_parameters, place, placement_theta
from lightning_models.nn.stn import affine_scale_rotation


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
        DistortedMNISTDataModule("tc")
    with pytest.raises(ValueError, match="data.scale_range"):
        DistortedMNISTDataModule("rts", scale_range=(1.2, 0.7))
    with pytest.raises(ValueError, match="data.canvas"):
        DistortedMNISTDataModule("rts", canvas=20)
