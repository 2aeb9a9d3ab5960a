"""VAE pieces against torch.distributions, and the importance-weighted bound's properties."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_models import VAE
from lightning_models.nn.autoencoders import mirrored_mlps
from lightning_models.nn.vae import gaussian_kl, importance_weighted_nll, log_likelihood, log_normal


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    q, p = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    torch.testing.assert_close(gaussian_kl(mu, logvar), kl_divergence(q, p).sum(-1))


def test_log_normal_matches_torch_distributions():
    z, mu, logvar = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(log_normal(z, mu, logvar), Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1))
    torch.testing.assert_close(log_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_bernoulli_and_gaussian_likelihoods():
    x = torch.randint(0, 2, (2, 1, 3, 3)).float()
    logits = torch.randn(2, 1, 3, 3)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(log_likelihood(x, logits, "bernoulli"), expected)
    out = torch.randn(2, 2, 3, 3)
    mean, logvar = torch.sigmoid(out[:, :1]), out[:, 1:]
    expected = Normal(mean, (0.5 * logvar).exp()).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(log_likelihood(x, out, "gaussian"), expected)


@pytest.fixture(scope="module")
def trained_vae(mnist):
    """A small VAE trained for a few hundred steps on binarised MNIST (fast, but far from its prior)."""
    torch.manual_seed(0)
    model = VAE(*mirrored_mlps((200,), 10, "relu", encoder_outputs=2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_train = mnist.train_set.tensors[0][:20000].float() / 255
    for step in range(300):
        x = torch.bernoulli(x_train[torch.randint(0, len(x_train), (128,))])
        loss = model.negative_elbo(x)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_images(mnist):
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(mnist.test_set.tensors[0][:64].float() / 255, generator=g)


def test_iw_nll_with_one_sample_is_the_elbo_in_expectation(trained_vae, test_images):
    with torch.no_grad():
        elbo = torch.stack([trained_vae.negative_elbo(test_images)[0] for _ in range(200)])
        iw1 = torch.stack([importance_weighted_nll(test_images, trained_vae.encode_distribution, trained_vae.decoder,
                                                   k=1) for _ in range(200)])
    diff = (iw1.mean(0) - elbo.mean(0)).mean()
    stderr = ((iw1.var(0) + elbo.var(0)) / 200).mean().sqrt() / 64 ** 0.5
    assert abs(diff.item()) < 4 * stderr.item() + 0.05, (diff, stderr)


def test_iw_nll_decreases_with_k(trained_vae, test_images):
    est = {k: importance_weighted_nll(test_images, trained_vae.encode_distribution, trained_vae.decoder, k=k,
                                      ).mean().item() for k in (1, 10, 100, 1000)}
    assert est[1] > est[10] > est[100] > est[1000], est
    assert est[1] - est[1000] > 1.0, est  # a trained posterior is not exact: the bound tightens by nats


def test_iw_nll_does_not_depend_on_how_samples_are_split_into_passes(trained_vae, test_images):
    def mean_estimate(rows):  # k = 200 in one pass, or in passes of 7 samples (the last one short)
        return torch.stack([importance_weighted_nll(test_images, trained_vae.encode_distribution, trained_vae.decoder,
                                                    k=200, rows=rows) for _ in range(8)]).mean().item()

    one_pass, many_passes = mean_estimate(64 * 200), mean_estimate(64 * 7)
    # other random draws of the same estimator: equal within sampling noise
    assert abs(one_pass - many_passes) < 0.25, (one_pass, many_passes)
