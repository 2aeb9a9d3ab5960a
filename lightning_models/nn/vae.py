"""Variational autoencoder pieces (Kingma & Welling 2014) and the importance-weighted bound (Burda et al. 2016).

log-densities are per image (summed over pixels or latent units), in nats.
"""

import math

import torch
import torch.nn.functional as F

from dl4.errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I)  (Kingma & Welling 2014, eq. 10)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)  (Appendix B)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def log_normal(z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def log_likelihood(x: torch.Tensor, out: torch.Tensor, kind: str = "bernoulli") -> torch.Tensor:
    """log p(x|z) per image from the decoder's output: Bernoulli logits (C channels) or Gaussian
    mean logits and log-variances (2C channels: the first C pass a sigmoid to give the mean in [0, 1])."""
    if kind == "bernoulli":  # log Bernoulli(x; sigmoid(l)) = x l - log(1 + e^l), as one fused op
        return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").flatten(-3).sum(-1)
    if kind == "gaussian":
        mean_logits, logvar = out.chunk(2, dim=-3)
        mean = torch.sigmoid(mean_logits)
        return -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) / logvar.exp()).flatten(-3).sum(-1)
    raise ConfigError(f"unknown likelihood {kind!r}; choose 'bernoulli' or 'gaussian'")


@torch.no_grad()
def importance_weighted_nll(x, encode, decode, k: int, likelihood: str = "bernoulli", rows: int = 2048):
    """-log p(x) ~= -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x)  (Burda et al. 2016, eq. 8).

    ``encode(x) -> (mu, logvar)``, ``decode(z) -> decoder output``. k=1 is the (stochastic) -ELBO; the estimate
    decreases towards -log p(x) as k grows. The decoder sees about ``rows`` (sample, image) pairs at a time: a few
    thousand keep a CPU's caches warm, a GPU wants far more.
    """
    mu, logvar = encode(x)
    per_pass = max(1, rows // len(x))
    log_w = []
    for start in range(0, k, per_pass):
        n = min(per_pass, k - start)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(n, *mu.shape, device=mu.device, dtype=mu.dtype)  # (n, B, D)
        out = decode(z.flatten(0, 1)).unflatten(0, (n, len(x)))
        log_w.append(log_likelihood(x, out, likelihood) + log_normal(z) - log_normal(z, mu, logvar))
    log_w = torch.cat(log_w)  # (k, B)
    return -(torch.logsumexp(log_w, 0) - math.log(k))
