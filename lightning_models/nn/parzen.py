"""Gaussian Parzen-window log-likelihood: the evaluation of Goodfellow et al. 2014 (section 5, Table 1).

Fit an isotropic Gaussian at every one of N samples mu_i of the model, then for a test image x (d pixels in [0, 1])

    log p(x) = log (1/N) sum_i N(x; mu_i, sigma^2 I)
             = logsumexp_i(-||x - mu_i||^2 / (2 sigma^2)) - log N - d log(sigma sqrt(2 pi))

sigma is chosen from a grid (logspace(-1, 0, 10) for MNIST) by the mean log-likelihood of a validation set, and
the score is the mean over the test set +- its standard error, as the paper's ``parzen_ll.py`` computes it.
"""

import math

import torch
from torchmetrics import Metric

MNIST_SIGMAS = torch.logspace(-1, 0, 10).tolist()


def parzen_log_likelihood(x: torch.Tensor, centers: torch.Tensor, sigma: float, batch_size: int = 1000):
    """log p(x) per row of ``x`` under the Parzen window of ``centers`` with width ``sigma``, in nats.

    Squared distances come from ||x||^2 + ||mu||^2 - 2 x.mu (one matrix product per batch of ``x``), so the
    full MNIST protocol is a few seconds on a CPU. Both inputs are flattened to (rows, d).
    """
    x, centers = x.flatten(1), centers.flatten(1).to(x.dtype)
    n, d = centers.shape
    c_sq = centers.pow(2).sum(1)
    const = math.log(n) + d * math.log(sigma * math.sqrt(2 * math.pi))
    out = []
    for xb in x.split(batch_size):
        sq_dist = (xb.pow(2).sum(1, keepdim=True) + c_sq - 2 * xb @ centers.T).clamp_min_(0)
        out.append(torch.logsumexp(sq_dist / (-2 * sigma ** 2), dim=1) - const)
    return torch.cat(out)


def select_sigma(centers: torch.Tensor, valid: torch.Tensor, sigmas=MNIST_SIGMAS, batch_size: int = 1000):
    """The sigma of the grid with the highest mean validation log-likelihood, and the curve it was chosen from."""
    curve = [parzen_log_likelihood(valid, centers, s, batch_size).mean().item() for s in sigmas]
    best = max(range(len(sigmas)), key=curve.__getitem__)
    return float(sigmas[best]), curve


def parzen_evaluate(centers: torch.Tensor, valid: torch.Tensor, test: torch.Tensor, sigmas=MNIST_SIGMAS,
                    batch_size: int = 1000) -> dict:
    """The whole protocol: sigma chosen on ``valid``, then mean log p(test) +- std / sqrt(N) (population std,
    as ``parzen_ll.py``)."""
    sigma, curve = select_sigma(centers, valid, sigmas, batch_size)
    ll = parzen_log_likelihood(test, centers, sigma, batch_size).double()
    return {"sigma": sigma, "mean": ll.mean().item(), "stderr": (ll.std(unbiased=False) / math.sqrt(len(ll))).item(),
            "curve": curve}


class MeanStdErr(Metric):
    """Mean and standard error (population std / sqrt(N)) of a stream of values, summed across processes."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("total", "total_sq", "count"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double()
        self.total += values.sum()
        self.total_sq += values.pow(2).sum()
        self.count += values.numel()

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean ** 2).clamp_min(0)
        return mean, (var / self.count).sqrt()
