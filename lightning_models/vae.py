"""Variational autoencoder: Gaussian q(z|x), standard normal prior, Bernoulli or Gaussian p(x|z).

Trained on -ELBO = KL(q(z|x) || p(z)) - E_q[log p(x|z)]; tested on -ELBO and the importance-weighted NLL.
"""

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from dl4.errors import ConfigError, check_positive
from lightning_models.nn.autoencoders import mirrored_mlps
from lightning_models.nn.vae import gaussian_kl, importance_weighted_nll, log_likelihood, reparameterize
from dl4.predictions import NoiseSeeds, Predictions, seeded_noise
from lightning_models.checkpoints import ConfiguredNetworks
from lightning_models.optim import fused_adam, optimizer_with_schedule, trainable
from lightning_models.train_logging import log_train_metrics


class VAE(ConfiguredNetworks):
    """Gaussian encoder q(z|x) = N(mu(x), diag sigma^2(x)), prior N(0, I), MLP decoder p(x|z).

    Args:
        encoder: images -> (B, 2 latent_dim): the mean and log-variance of q(z|x), concatenated; default an
            ``Encoder`` 784-200-200-(2 x 50) (tanh), the one-stochastic-layer VAE of Burda et al. 2016.
        decoder: z (B, latent_dim) -> pixel logits (B, C, H, W), two channels (mean, log-variance) for the
            ``gaussian`` likelihood; default the mirrored ``Decoder``. Its ``code_dim`` is the latent size.
        likelihood: ``bernoulli`` (binarised data) or ``gaussian`` (per-pixel mean and variance).
        iw_samples: k of the importance-weighted NLL reported at test time.
        iw_rows: (sample, image) pairs the decoder sees at once in that estimate (a few thousand on a CPU, more on a GPU).
        optimizer, lr_scheduler: default Adam at 1e-3 (fused), no schedule (``lightning_models/optim.py``).
    """

    def __init__(self, encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 likelihood: Literal["bernoulli", "gaussian"] = "bernoulli", iw_samples: int = 1000,
                 iw_rows: int = 2048, optimizer: OptimizerCallable | None = None,
                 lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        check_positive("model", iw_samples=iw_samples, iw_rows=iw_rows)
        # evaluation settings stay out of the checkpoint, so `dl4 test --ckpt_path ... --model.iw_samples=5000` applies
        self.save_hyperparameters(ignore=["iw_samples", "iw_rows"])
        self.iw_samples, self.iw_rows = iw_samples, iw_rows
        self.optimizer, self.lr_scheduler = optimizer or fused_adam(1e-3), lr_scheduler
        out_channels = 2 if likelihood == "gaussian" else 1
        if encoder is None and decoder is None:
            encoder, decoder = mirrored_mlps((200, 200), 50, "tanh", encoder_outputs=2, out_channels=out_channels)
        elif encoder is None or decoder is None:
            raise ConfigError("model.init_args: pass both encoder and decoder, or neither (the default nets)")
        self.latent_dim = decoder.code_dim
        if getattr(encoder, "code_dim", 2 * self.latent_dim) != 2 * self.latent_dim:
            raise ConfigError(f"model.init_args.encoder.init_args.code_dim must be 2 x the decoder's code_dim "
                             f"({2 * self.latent_dim}: a mean and a log-variance per latent), got {encoder.code_dim}")
        if getattr(decoder, "out_channels", out_channels) != out_channels:
            raise ConfigError(f"model.init_args.decoder.init_args.out_channels must be {out_channels} for the "
                             f"{likelihood} likelihood, got {decoder.out_channels}")
        self.encoder, self.decoder = encoder, decoder
        self.val_elbo, self.test_elbo, self.test_iw_nll = MeanMetric(), MeanMetric(), MeanMetric()

    def encode_distribution(self, x):
        """The mean and log-variance of q(z|x)."""
        return self.encoder(x).chunk(2, dim=-1)

    def encode(self, x):
        return self.encode_distribution(x)[0]

    def decode(self, z):
        """The mean image E[x|z]."""
        out = self.decoder(z)
        if self.hparams.likelihood == "gaussian":
            out = out.chunk(2, dim=-3)[0]
        return torch.sigmoid(out)

    def forward(self, x):
        return self.decode(self.encode(x))

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z) = N(0, I), n of them on the module's device (drawn where ``generator`` lives when one is given)."""
        if generator is None:
            return torch.randn(n, self.latent_dim, device=self.device)
        return torch.randn(n, self.latent_dim, generator=generator, device=generator.device).to(self.device)

    def sample(self, n: int | None = None, z: torch.Tensor | None = None):
        """Mean images decoded from z ~ p(z) = N(0, I) (or from the given z)."""
        return self.decode(self.noise(n) if z is None else z)

    def negative_elbo(self, x):
        """Per image: (-ELBO, KL, -E_q[log p(x|z)]) with one reparameterised sample."""
        mu, logvar = self.encode_distribution(x)
        kl = gaussian_kl(mu, logvar)
        nll = -log_likelihood(x, self.decoder(reparameterize(mu, logvar)), self.hparams.likelihood)
        return kl + nll, kl, nll

    def training_step(self, batch, batch_idx):
        neg_elbo, kl, nll = (t.mean() for t in self.negative_elbo(batch[0]))
        log_train_metrics(self, {"train/neg_elbo": neg_elbo, "train/kl": kl, "train/recon_nll": nll})
        return neg_elbo

    def validation_step(self, batch, batch_idx):
        self.val_elbo.update(self.negative_elbo(batch[0])[0])
        self.log("val/neg_elbo", self.val_elbo, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x = batch[0]
        self.test_elbo.update(self.negative_elbo(x)[0])
        self.test_iw_nll.update(importance_weighted_nll(x, self.encode_distribution, self.decoder,
                                                        self.iw_samples, self.hparams.likelihood, self.iw_rows))
        self.log("test/neg_elbo", self.test_elbo)
        self.log(f"test/iw_nll_k{self.iw_samples}", self.test_iw_nll)

    def predict_step(self, batch, batch_idx):
        """``dl4 predict``: samples for noise seeds (``data.predict_samples``), or per image its code (the mean of
        q(z|x)), its reconstruction (decoded from that mean), -ELBO and the importance-weighted NLL (``iw_samples``)."""
        if isinstance(batch, NoiseSeeds):
            z = seeded_noise(batch.seeds, lambda g: self.noise(1, g))
            x = self.decode(z)
            return Predictions([{"seed": s} for s in batch.seeds.tolist()], {"sample": x, "z": z}, {"sample": x})
        x, labels = batch
        mu = self.encode(x)
        x_hat = self.decode(mu)
        neg_elbo = self.negative_elbo(x)[0].tolist()
        iw_nll = importance_weighted_nll(x, self.encode_distribution, self.decoder, self.iw_samples,
                                         self.hparams.likelihood, self.iw_rows).tolist()
        records = [{"neg_elbo": e, f"iw_nll_k{self.iw_samples}": n, **({"label": y} if y >= 0 else {})}
                   for e, n, y in zip(neg_elbo, iw_nll, labels.tolist())]
        return Predictions(records, {"input": x, "reconstruction": x_hat, "code": mu},
                           {"reconstruction": torch.cat([x, x_hat], dim=-1)})

    def configure_optimizers(self):
        return optimizer_with_schedule(trainable(self), self.optimizer, self.lr_scheduler)
