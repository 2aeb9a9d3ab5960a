"""Generative adversarial nets (Goodfellow et al. 2014), trained by Algorithm 1 and scored by the paper's
Parzen-window log-likelihood.

Algorithm 1 with Lightning's manual optimisation: every training batch makes one discriminator step (a fresh
minibatch of real data and of noise), and every k-th batch also makes one generator step, so k D-steps alternate
with one G-step. On the batches with a G-step, the generator's samples of the D-step are reused for it.
"""

from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from dl4.errors import ConfigError, check_positive
from lightning_models.nn.gan import (MLPDiscriminator, MLPGenerator, Prior, discriminator_loss, generator_loss,
                                     sample_noise, uniform_init)
from lightning_models.nn.parzen import MNIST_SIGMAS, MeanStdErr, parzen_log_likelihood, select_sigma
from dl4.predictions import NoiseSeeds, Predictions, seeded_noise
from lightning_models.checkpoints import ConfiguredNetworks
from dl4.internals import find_unused_parameters
from lightning_models.optim import build_optimizer, fused_adam, trainable
from lightning_models.train_logging import log_train_metrics


class GAN(ConfiguredNetworks):
    """Generator G(z) and discriminator D(x) playing the minimax game of eq. 1.

    Args:
        generator: G, noise (B, noise_dim) -> data; it must say its ``noise_dim``. Default the paper's
            ``MLPGenerator`` (100-1200-1200-784, ReLU, sigmoid pixels); ``DCGenerator`` for convolutions.
        discriminator: D, data -> one logit per example. Default the paper's ``MLPDiscriminator`` (maxout 240-240,
            dropout); ``DCDiscriminator`` for convolutions.
        prior: p_z, ``uniform`` on [-sqrt 3, sqrt 3] or ``gaussian``.
        k_steps: discriminator steps per generator step (Algorithm 1's k).
        generator_objective: ``non_saturating`` (-log D(G(z))) or ``minimax`` (log(1 - D(G(z)))).
        d_optimizer, g_optimizer: each player's optimiser (``class_path: torch.optim.SGD`` and its ``init_args``
            in the config); default Adam(2e-4, betas (0.5, 0.999)). The paper's code weighs D's objective by 1/2,
            which is D's learning rate halved.
        d_lr_scheduler, g_lr_scheduler: each player's schedule, stepped after every epoch (e.g.
            ``torch.optim.lr_scheduler.ExponentialLR``); none by default. The paper's momentum ramp is the
            ``MomentumRamp`` callback.
        parzen_samples, parzen_valid, parzen_eval: the small Parzen protocol run after every validation epoch:
            that many samples from a fixed noise batch, sigma chosen on the first ``parzen_valid`` validation
            images and the log-likelihood averaged over the next ``parzen_eval``.
        test_samples, test_valid: the full protocol of ``dl4 test``: 10,000 samples, sigma chosen on the first
            1,000 validation images (train[50000:51000] with the datamodule's ``val_split: tail``), the mean
            log-likelihood of the test set.
        parzen_sigmas: the bandwidth grid (logspace(-1, 0, 10), the paper's for MNIST).
        g_init_range, d_init_range: draw every weight of G (D) from U(-range, range), biases 0, as the paper's
            code does (0.05 and 0.005); None keeps the nets' own initialisation.
        output_bias_from_data: start G's output biases at the logits of the training pixels' means
            (pylearn2's ``init_sigmoid_bias_from_marginals``), so the untrained G already draws the mean image.
    """

    def __init__(self, generator: nn.Module | None = None, discriminator: nn.Module | None = None,
                 prior: Prior = "uniform", k_steps: int = 1,
                 generator_objective: Literal["non_saturating", "minimax"] = "non_saturating",
                 d_optimizer: OptimizerCallable | None = None, g_optimizer: OptimizerCallable | None = None,
                 d_lr_scheduler: LRSchedulerCallable | None = None,
                 g_lr_scheduler: LRSchedulerCallable | None = None, parzen_samples: int = 1000,
                 parzen_valid: int = 300, parzen_eval: int = 1000, test_samples: int = 10000, test_valid: int = 1000,
                 parzen_sigmas: Sequence[float] = tuple(MNIST_SIGMAS), g_init_range: float | None = None,
                 d_init_range: float | None = None, output_bias_from_data: bool = False):
        super().__init__()
        check_positive("model", parzen_samples=parzen_samples, parzen_valid=parzen_valid, parzen_eval=parzen_eval,
                       test_samples=test_samples, test_valid=test_valid, parzen_sigmas=list(parzen_sigmas),
                       g_init_range=g_init_range, d_init_range=d_init_range)
        if k_steps < 1:
            raise ConfigError(f"model.k_steps must be at least 1, got {k_steps}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = MLPGenerator() if generator is None else generator
        self.discriminator = MLPDiscriminator() if discriminator is None else discriminator
        if not isinstance(getattr(self.generator, "noise_dim", None), int):
            raise ConfigError(f"model.init_args.generator ({type(self.generator).__name__}) must say its noise size "
                             f"as an int attribute noise_dim")
        self.noise_dim = self.generator.noise_dim
        dcgan_adam = fused_adam(2e-4, betas=(0.5, 0.999))  # the DCGAN recipe
        self.d_optimizer, self.g_optimizer = d_optimizer or dcgan_adam, g_optimizer or dcgan_adam
        self.d_lr_scheduler, self.g_lr_scheduler = d_lr_scheduler, g_lr_scheduler
        for module, init_range in ((self.generator, g_init_range), (self.discriminator, d_init_range)):
            if init_range is not None:
                uniform_init(module, init_range)
        if output_bias_from_data and not isinstance(self.generator, MLPGenerator):
            raise ConfigError("model.output_bias_from_data needs an MLPGenerator (its last layer is linear)")
        # a fixed noise batch: the training-time Parzen estimate and the sample grids compare across epochs
        fixed = torch.Generator().manual_seed(0)
        self.register_buffer("fixed_z", sample_noise(parzen_samples, self.noise_dim, prior, generator=fixed),
                             persistent=False)
        self.val_d_real, self.val_d_fake, self.val_d_acc = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_d_acc = MeanMetric()
        self.test_parzen = MeanStdErr()
        self._g_loss: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        # each player's step leaves the other's parameters without a gradient, so under DDP the reducer must look
        # for unused parameters (what `strategy=ddp_find_unused_parameters_true` sets); an explicit choice stays
        find_unused_parameters(self.trainer.strategy)

    def on_fit_start(self) -> None:
        # a fresh run only: a resumed run's weights are already restored (and its global_step is still 0 here)
        if self.hparams.output_bias_from_data and self.trainer.ckpt_path is None:
            dm = self.trainer.datamodule
            total, count = 0.0, 0
            for batch in dm.train_dataloader():
                x = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, self.device, 0), 0)[0]
                total, count = total + x.sum(0), count + len(x)
            p = (total / count).flatten().clamp(1e-3, 1 - 1e-3)
            p = self.trainer.strategy.broadcast(p)
            with torch.no_grad():
                self.generator.output_layer.bias.copy_(torch.log(p / (1 - p)))  # sigmoid(bias) = mean pixel

    # --- the game ---

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p_z, n of them on the module's device (drawn where ``generator`` lives when one is given)."""
        if generator is None:
            return sample_noise(n, self.noise_dim, self.hparams.prior, device=self.device)
        return sample_noise(n, self.noise_dim, self.hparams.prior, generator.device, generator).to(self.device)

    def sample(self, n: int | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        """x = G(z), z ~ p_z (or the given z)."""
        return self.generator(self.noise(n) if z is None else z)

    def forward(self, z):
        return self.generator(z)

    def discriminator_step(self, x: torch.Tensor, opt, fake: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One step of Algorithm 1's inner loop: m noise samples and m examples, ascend V in D's parameters.
        ``fake``: G(z) already drawn for this batch (used detached); otherwise it is drawn here."""
        if fake is None:
            with torch.no_grad():
                fake = self.sample(len(x))
        real_logits, fake_logits = self.discriminator(x), self.discriminator(fake.detach())
        loss = discriminator_loss(real_logits, fake_logits)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        with torch.no_grad():
            acc = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
            return {"d_loss": loss.detach(), "d_real": torch.sigmoid(real_logits).mean(),
                    "d_fake": torch.sigmoid(fake_logits).mean(), "d_acc": acc}

    def generator_step(self, fake: torch.Tensor, opt) -> torch.Tensor:
        """Algorithm 1's generator update on m samples fake = G(z): descend the generator objective in G's
        parameters (D's parameters are frozen meanwhile, so no gradient is computed for them)."""
        self.discriminator.requires_grad_(False)
        loss = generator_loss(self.discriminator(fake), self.hparams.generator_objective)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        self.discriminator.requires_grad_(True)
        return loss.detach()

    def training_step(self, batch, batch_idx):
        x = batch[0]
        opt_d, opt_g = self.optimizers()
        g_step = (batch_idx + 1) % self.hparams.k_steps == 0
        # on a batch that ends with a G-step, one G(z) serves both players (as pytorch/examples' DCGAN does):
        # D steps on it detached, then G steps through the updated D; other batches draw G(z) without a graph
        fake = self.sample(len(x)) if g_step else None
        stats = self.discriminator_step(x, opt_d, fake)
        if g_step:
            self._g_loss = self.generator_step(fake, opt_g)
        self.train_d_acc.update(stats["d_acc"])
        if self._g_loss is not None:
            stats["g_loss"] = self._g_loss
        log_train_metrics(self, {f"train/{k}": v for k, v in stats.items()})

    def on_train_epoch_end(self):
        self.log("train/d_acc_epoch", self.train_d_acc.compute())
        self.train_d_acc.reset()
        schedulers = self.lr_schedulers()  # None, one scheduler, or a list of them
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

    # --- validation: D on held-out data, and the small Parzen protocol ---

    def validation_step(self, batch, batch_idx):
        x = batch[0]
        real_logits = self.discriminator(x)
        fake_logits = self.discriminator(self.sample(len(x)))
        self.val_d_real.update(torch.sigmoid(real_logits))
        self.val_d_fake.update(torch.sigmoid(fake_logits))
        self.val_d_acc.update(torch.cat([(real_logits > 0).float(), (fake_logits < 0).float()]))
        self.log_dict({"val/d_real": self.val_d_real, "val/d_fake": self.val_d_fake, "val/d_acc": self.val_d_acc})

    def on_validation_epoch_end(self):
        # the first parzen_valid + parzen_eval validation images, the same on every process (not the shard this
        # process validated on), so that under DDP every rank computes the one-process number
        images = self.trainer.datamodule.fixed_batch(self.hparams.parzen_valid + self.hparams.parzen_eval,
                                                     device=self.device)[0]
        if len(images) < 2:
            return
        n_valid = min(self.hparams.parzen_valid, len(images) // 2)
        samples = self.generator(self.fixed_z)
        sigma, _ = select_sigma(samples, images[:n_valid], self.hparams.parzen_sigmas)
        ll = parzen_log_likelihood(images[n_valid:n_valid + self.hparams.parzen_eval], samples, sigma)
        self.log_dict({"val/parzen_ll": ll.mean(), "val/parzen_sigma": sigma}, sync_dist=True)  # equal everywhere

    # --- test: the paper's full Parzen protocol ---

    def on_test_epoch_start(self):
        dm = self.trainer.datamodule
        if dm is None:
            raise RuntimeError("GAN.test needs a datamodule: the Parzen bandwidth is chosen on its validation set")
        valid = dm.fixed_batch(self.hparams.test_valid, device=self.device)[0]  # the first validation images
        g = torch.Generator(device=self.device).manual_seed(1)
        z = sample_noise(self.hparams.test_samples, self.noise_dim, self.hparams.prior, self.device, g)
        self._test_samples = torch.cat([self.generator(zb) for zb in z.split(1000)])
        self._test_sigma, self._sigma_curve = select_sigma(self._test_samples, valid, self.hparams.parzen_sigmas)

    def test_step(self, batch, batch_idx):
        self.test_parzen.update(parzen_log_likelihood(batch[0], self._test_samples, self._test_sigma))

    def on_test_epoch_end(self):
        mean, stderr = self.test_parzen.compute()
        self.log_dict({"test/parzen_ll": mean.float(), "test/parzen_ll_stderr": stderr.float(),
                       "test/parzen_sigma": self._test_sigma})
        self.test_parzen.reset()

    def predict_step(self, batch, batch_idx, interpolation_steps: int = 8):
        """``dl4 predict``: for noise seeds (``data.predict_samples``) each sample G(z) and the path from its z to
        the next seed's, decoded at ``interpolation_steps`` points (so consecutive samples' strips join up); for
        images, D's probability that each is real."""
        if not isinstance(batch, NoiseSeeds):
            x, *labels = batch  # (the 1-D toy data has no labels)
            labels = labels[0].tolist() if labels else [-1] * len(x)
            p_real = torch.sigmoid(self.discriminator(x)).flatten().tolist()
            return Predictions([{"p_real": p, **({"label": y} if y >= 0 else {})} for p, y in zip(p_real, labels)])
        z = seeded_noise(batch.seeds, lambda g: self.noise(1, g))
        z_next = seeded_noise(batch.seeds + 1, lambda g: self.noise(1, g))
        t = torch.linspace(0, 1, interpolation_steps, device=z.device)[None, :, None]
        path = (1 - t) * z[:, None] + t * z_next[:, None]  # (B, steps, noise_dim)
        frames = self.generator(path.flatten(0, 1)).unflatten(0, path.shape[:2])  # (B, steps, C, H, W)
        arrays = {"sample": frames[:, 0], "z": z, "interpolation": frames}
        if frames.dim() != 5:  # not images (the 1-D GAN): the values themselves
            return Predictions([{"seed": s, "x": x} for s, x in zip(batch.seeds.tolist(), frames[:, 0].tolist())],
                               arrays)
        return Predictions([{"seed": s} for s in batch.seeds.tolist()], arrays,
                           {"sample": frames[:, 0], "interpolation": torch.cat(frames.unbind(1), dim=-1)})

    def configure_optimizers(self):
        opt_d = build_optimizer(self.d_optimizer, trainable(self.discriminator), "d_optimizer")
        opt_g = build_optimizer(self.g_optimizer, trainable(self.generator), "g_optimizer")
        schedulers = [schedule(opt) for schedule, opt in ((self.d_lr_scheduler, opt_d), (self.g_lr_scheduler, opt_g))
                      if schedule is not None]
        return ([opt_d, opt_g], schedulers) if schedulers else [opt_d, opt_g]
