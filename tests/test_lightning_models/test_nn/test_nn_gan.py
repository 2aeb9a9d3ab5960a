"""The GAN's pure-torch pieces and the Parzen-window evaluator, checked against their formulas."""

import math

import pytest
import torch

from lightning_models.nn.gan import (DCDiscriminator, DCGenerator, Maxout, MLPDiscriminator, MLPGenerator,
                                     discriminator_loss, generator_loss, sample_noise)
from lightning_models.nn.parzen import MeanStdErr, parzen_evaluate, parzen_log_likelihood, select_sigma


def test_losses_are_the_value_function_in_logits():
    real, fake = torch.randn(64), torch.randn(64)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    value = torch.log(d_real).mean() + torch.log(1 - d_fake).mean()  # eq. 1 on the minibatch
    assert torch.allclose(discriminator_loss(real, fake), -value, atol=1e-5)
    assert torch.allclose(generator_loss(fake, "minimax"), torch.log(1 - d_fake).mean(), atol=1e-5)
    assert torch.allclose(generator_loss(fake, "non_saturating"), -torch.log(d_fake).mean(), atol=1e-5)
    with pytest.raises(ValueError, match="generator loss"):
        generator_loss(fake, "wasserstein")


def test_non_saturating_loss_keeps_its_gradient_where_minimax_vanishes():
    fake = torch.full((8,), -10.0, requires_grad=True)  # D confidently rejects G's samples
    grads = {}
    for kind in ("minimax", "non_saturating"):
        (g,) = torch.autograd.grad(generator_loss(fake, kind), fake)
        grads[kind] = g.abs().mean().item()
    assert grads["minimax"] < 1e-5 < 0.05 < grads["non_saturating"]


def test_maxout_is_the_max_over_pieces():
    layer = Maxout(3, 4, pieces=5)
    x = torch.randn(7, 3)
    pre = layer.linear(x).view(7, 4, 5)
    assert torch.equal(layer(x), pre.max(-1).values)


def test_noise_priors_have_unit_variance():
    g = torch.Generator().manual_seed(0)
    for prior in ("uniform", "gaussian"):
        z = sample_noise(200000, 3, prior, generator=g)
        assert abs(z.var().item() - 1) < 0.02
    assert sample_noise(1000, 2, "uniform", generator=g).abs().max() <= math.sqrt(3)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_players_map_noise_to_images_and_images_to_one_logit(arch):
    if arch == "mlp":
        g, d = MLPGenerator(10, [32], (1, 28, 28)), MLPDiscriminator((1, 28, 28), [16], "maxout", 3)
    else:
        g, d = DCGenerator(10, (1, 28, 28), width=8), DCDiscriminator((1, 28, 28), width=8)
    x = g(torch.randn(5, 10))
    assert x.shape == (5, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert d(x).shape == (5,)


def direct_parzen(x, centers, sigma):
    """The formula term by term, in float64: log (1/N) sum_i prod_j N(x_j; mu_ij, sigma^2)."""
    x, centers = x.double().flatten(1), centers.double().flatten(1)
    out = []
    for row in x:
        log_k = torch.stack([torch.distributions.Normal(c, sigma).log_prob(row).sum() for c in centers])
        out.append(torch.logsumexp(log_k, 0) - math.log(len(centers)))
    return torch.stack(out)


def test_parzen_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    centers, x = torch.rand(30, 1, 4, 4, generator=g), torch.rand(9, 1, 4, 4, generator=g)
    for sigma in (0.1, 0.3, 1.0):
        fast = parzen_log_likelihood(x.double(), centers.double(), sigma, batch_size=4)
        assert torch.allclose(fast, direct_parzen(x, centers, sigma), atol=1e-5, rtol=0)
    # float32 (what the protocol runs in) stays within a hundredth of a nat at MNIST size
    centers, x = torch.rand(500, 784, generator=g), torch.rand(50, 784, generator=g)
    f32 = parzen_log_likelihood(x, centers, 0.2)
    f64 = parzen_log_likelihood(x.double(), centers.double(), 0.2)
    assert (f32.double() - f64).abs().max() < 0.01


def test_chosen_sigma_is_the_argmax_of_the_validation_curve():
    g = torch.Generator().manual_seed(1)
    centers, valid, test = torch.rand(40, 16, generator=g), torch.rand(20, 16, generator=g), torch.rand(25, 16, generator=g)
    sigmas = torch.logspace(-1, 0, 10).tolist()
    sigma, curve = select_sigma(centers.double(), valid.double(), sigmas)
    direct = [direct_parzen(valid, centers, s).mean().item() for s in sigmas]
    assert curve == pytest.approx(direct, abs=1e-5)
    assert sigma == sigmas[max(range(10), key=direct.__getitem__)]
    result = parzen_evaluate(centers.double(), valid.double(), test.double(), sigmas)
    ll = direct_parzen(test, centers, sigma)
    assert result["mean"] == pytest.approx(ll.mean().item(), abs=1e-5)
    assert result["stderr"] == pytest.approx(ll.std(unbiased=False).item() / math.sqrt(25), abs=1e-6)


def test_mean_stderr_metric_streams_batches():
    values = torch.randn(1000, dtype=torch.float64) * 3 + 200
    metric = MeanStdErr()
    for chunk in values.split(77):
        metric.update(chunk)
    mean, stderr = metric.compute()
    assert mean.item() == pytest.approx(values.mean().item(), abs=1e-9)
    assert stderr.item() == pytest.approx(values.std(unbiased=False).item() / math.sqrt(1000), abs=1e-9)
