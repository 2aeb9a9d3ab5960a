"""The autoencoder family's equations against their formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_models.nn.autoencoders import (Decoder, Encoder, contractive_penalty_sigmoid, gaussian_noise,
                                              jacobian_frobenius_sq, kl_sparsity, masking_noise, mlp,
                                              reconstruction_error, top_k)


def test_kl_sparsity_matches_the_formula_unit_by_unit():
    h = torch.rand(64, 10)
    rho = 0.05
    expected = 0.0
    for j in range(10):
        rho_hat = h[:, j].mean().item()
        expected += rho * math.log(rho / rho_hat) + (1 - rho) * math.log((1 - rho) / (1 - rho_hat))
    assert kl_sparsity(h, rho).item() == pytest.approx(expected, rel=1e-5)


def test_kl_sparsity_is_zero_exactly_at_the_target_and_positive_elsewhere():
    h = torch.full((32, 5), 0.05)
    assert kl_sparsity(h, 0.05).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_sparsity(h * 4, 0.05).item() > 0.1


def test_top_k_keeps_exactly_the_k_largest():
    h = torch.randn(16, 100)
    out = top_k(h, 7)
    assert ((out != 0).sum(1) == 7).all()
    kth = h.topk(7, dim=1).values[:, -1:]
    assert torch.equal(out != 0, h >= kth)
    assert torch.equal(out[out != 0], h[out != 0])


def test_top_k_passes_gradients_only_to_the_kept_units():
    h = torch.randn(4, 20, requires_grad=True)
    top_k(h, 3).sum().backward()
    assert ((h.grad != 0).sum(1) == 3).all()


def test_contractive_closed_form_equals_autograd_jacobian():
    encoder = Encoder((1, 8, 8), hidden_dims=(), code_dim=20, code_activation="sigmoid").double()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    h = encoder(x)
    closed = contractive_penalty_sigmoid(h, encoder.input_layer.weight)
    autograd = jacobian_frobenius_sq(encoder, x)
    torch.testing.assert_close(closed, autograd)
    # and the generic version agrees with a Jacobian built row by row
    x0 = x[0].flatten().requires_grad_()
    rows = [torch.autograd.grad(encoder(x0.view(1, 1, 8, 8))[0, j], x0)[0] for j in range(20)]
    assert autograd[0].item() == pytest.approx(torch.stack(rows).pow(2).sum().item())


def test_autograd_jacobian_penalty_is_differentiable_wrt_parameters():
    encoder = Encoder((1, 4, 4), hidden_dims=(8,), code_dim=3, activation="tanh")
    jacobian_frobenius_sq(encoder, torch.rand(2, 1, 4, 4)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters() if p.dim() == 2)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.75])
def test_masking_noise_zeroes_the_requested_fraction(rate):
    x = torch.ones(1000, 784)
    x_tilde = masking_noise(x, rate)
    assert (x_tilde == 0).float().mean().item() == pytest.approx(rate, abs=0.005)
    assert set(x_tilde.unique().tolist()) <= {0.0, 1.0}


def test_gaussian_noise_has_the_requested_standard_deviation():
    x = torch.zeros(1000, 784)
    assert gaussian_noise(x, 0.4).std().item() == pytest.approx(0.4, rel=0.01)


def test_reconstruction_errors_are_summed_per_image():
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(reconstruction_error(logits, x, "bce"), bce)
    torch.testing.assert_close(reconstruction_error(logits, x, "mse"), ((torch.sigmoid(logits) - x) ** 2).sum((1, 2, 3)))
    with pytest.raises(ValueError, match="choose 'bce' or 'mse'"):
        reconstruction_error(logits, x, "l1")


def test_encoder_decoder_shapes_and_unknown_activation():
    enc, dec = Encoder((1, 28, 28), (64,), 10), Decoder(10, (64,), (1, 28, 28))
    assert dec(enc(torch.rand(2, 1, 28, 28))).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        mlp([3, 4], activation="swishy")
