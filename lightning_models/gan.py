"""Generative adversarial nets (Goodfellow et al. 2014), trained by Algorithm 1 and scored by the paper's
Parzen-window log-likelihood.

Algorithm 1 with Lightning's manual optimisation: every training batch makes one discriminator step (a fresh
minibatch of real data and of noise), and every k-th batch also makes one generator step, so k D-steps alternate
with one G-step. On the batches with a G-step, the generator's samples of the D-step are reused for it.
"""

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from torchmetrics import MeanMetric

from lightning_models.nn.gan import (DCDiscriminator, DCGenerator, MLPDiscriminator, MLPGenerator, Prior,
                                     discriminator_loss, generator_loss, sample_noise, uniform_init)
from lightning_models.nn.parzen import MNIST_SIGMAS, MeanStdErr, parzen_log_likelihood, select_sigma
from lightning_models.train_logging import log_train_metrics


class GAN(L.LightningModule):
    """Generator G(z) and discriminator D(x) playing the minimax game of eq. 1.

    Args:
        noise_dim: size of z.
        prior: p_z, ``uniform`` on [-sqrt 3, sqrt 3] or ``gaussian``.
        architecture: ``mlp`` (the paper's fully connected nets) or ``dcgan`` (convolutional, 28x28 images).
        g_hidden, g_activation, g_batch_norm: the MLP generator's hidden layers.
        d_hidden, d_activation, maxout_pieces: the MLP discriminator's hidden layers (``maxout`` as the paper).
        d_dropout, d_input_dropout: dropout in D's hidden layers and on its input (MLP).
        output: G's output nonlinearity: ``sigmoid`` for pixels in [0, 1], ``identity`` for real-valued data.
        data_shape: shape of one example, (C, H, W) for images.
        k_steps: discriminator steps per generator step (Algorithm 1's k).
        generator_objective: ``non_saturating`` (-log D(G(z))) or ``minimax`` (log(1 - D(G(z)))).
        optimizer: ``adam`` or ``sgd`` (with ``momentum``, the paper's); ``lr_decay`` multiplies both learning
            rates after every epoch.
        parzen_samples, parzen_valid, parzen_eval: the small Parzen protocol run after every validation epoch:
            that many samples from a fixed noise batch, sigma chosen on the first ``parzen_valid`` validation
            images and the log-likelihood averaged over the next ``parzen_eval``.
        test_samples, test_valid: the full protocol of ``dl4 test``: 10,000 samples, sigma chosen on the first
            1,000 validation images (train[50000:51000] with the datamodule's ``val_split: tail``), the mean
            log-likelihood of the test set.
        parzen_sigmas: the bandwidth grid (logspace(-1, 0, 10), the paper's for MNIST).
        conv_width: channels of the DCGAN nets' first (D) and last (G) convolution.
        g_init_range, d_init_range: draw every weight of G (D) from U(-range, range), biases 0, as the paper's
            code does (0.05 and 0.005); None keeps PyTorch's default initialisation.
        output_bias_from_data: start G's output biases at the logits of the training pixels' means
            (pylearn2's ``init_sigmoid_bias_from_marginals``), so the untrained G already draws the mean image.
        d_lr_scale: D's learning rate is ``lr * d_lr_scale``; the paper's code weighs D's objective by 1/2
            (0.5).
        final_momentum, momentum_saturate: SGD's momentum rises linearly from ``momentum`` after the first epoch
            to ``final_momentum`` at epoch ``momentum_saturate`` (the paper's code: 0.5 to 0.7 by epoch 250).
    """

    def __init__(self, noise_dim: int = 100, prior: Prior = "uniform", architecture: Literal["mlp", "dcgan"] = "mlp",
                 g_hidden: Sequence[int] = (1200, 1200), g_activation: str = "relu", g_batch_norm: bool = False,
                 d_hidden: Sequence[int] = (240, 240), d_activation: str = "maxout", maxout_pieces: int = 5,
                 d_dropout: float = 0.5, d_input_dropout: float = 0.2, output: Literal["sigmoid", "identity"] = "sigmoid",
                 data_shape: Sequence[int] = (1, 28, 28), k_steps: int = 1,
                 generator_objective: Literal["non_saturating", "minimax"] = "non_saturating",
                 optimizer: Literal["adam", "sgd"] = "adam", lr: float = 2e-4, betas: Sequence[float] = (0.5, 0.999),
                 momentum: float = 0.5, lr_decay: float = 1.0, parzen_samples: int = 1000, parzen_valid: int = 300,
                 parzen_eval: int = 1000, test_samples: int = 10000, test_valid: int = 1000,
                 parzen_sigmas: Sequence[float] = tuple(MNIST_SIGMAS), conv_width: int = 64,
                 g_init_range: float | None = None, d_init_range: float | None = None,
                 output_bias_from_data: bool = False, d_lr_scale: float = 1.0, final_momentum: float | None = None,
                 momentum_saturate: int = 250):
        super().__init__()
        if k_steps < 1:
            raise ValueError(f"model.k_steps must be at least 1, got {k_steps}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        if architecture == "dcgan":
            self.generator = DCGenerator(noise_dim, data_shape, conv_width)
            self.discriminator = DCDiscriminator(data_shape, conv_width)
        else:
            self.generator = MLPGenerator(noise_dim, g_hidden, data_shape, g_activation, g_batch_norm, output)
            self.discriminator = MLPDiscriminator(data_shape, d_hidden, d_activation, maxout_pieces, d_dropout,
                                                  d_input_dropout)
        for module, init_range in ((self.generator, g_init_range), (self.discriminator, d_init_range)):
            if init_range is not None:
                uniform_init(module, init_range)
        if output_bias_from_data and not isinstance(self.generator, MLPGenerator):
            raise ValueError("model.output_bias_from_data needs architecture: mlp (G's last layer is linear)")
        # a fixed noise batch: the training-time Parzen estimate and the sample grids compare across epochs
        fixed = torch.Generator().manual_seed(0)
        self.register_buffer("fixed_z", sample_noise(parzen_samples, noise_dim, prior, generator=fixed),
                             persistent=False)
        self.val_d_real, self.val_d_fake, self.val_d_acc = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_d_acc = MeanMetric()
        self.test_parzen = MeanStdErr()
        self._val_images: list[torch.Tensor] = []
        self._g_loss: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        # each player's step leaves the other's parameters without a gradient, so under DDP the reducer must look
        # for unused parameters (what `strategy=ddp_find_unused_parameters_true` sets); an explicit choice stays
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None)
        if isinstance(ddp_kwargs, dict):
            ddp_kwargs.setdefault("find_unused_parameters", True)

    def on_fit_start(self) -> None:
        if self.hparams.output_bias_from_data and self.global_step == 0:
            dm = self.trainer.datamodule
            total, count = 0.0, 0
            for batch in dm.train_dataloader():
                x = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, self.device, 0), 0)[0]
                total, count = total + x.sum(0), count + len(x)
            p = (total / count).flatten().clamp(1e-3, 1 - 1e-3)
            p = self.trainer.strategy.broadcast(p)
            with torch.no_grad():
                self.generator.output_layer.bias.copy_(torch.log(p / (1 - p)))  # sigmoid(bias) = mean pixel

    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        if hp.optimizer == "sgd" and hp.final_momentum is not None:  # pylearn2's MomentumAdjustor
            progress = min(1.0, self.current_epoch / max(1, hp.momentum_saturate - 1))
            for opt in self.optimizers():
                for group in opt.param_groups:
                    group["momentum"] = hp.momentum + progress * (hp.final_momentum - hp.momentum)

    # --- the game ---

    def noise(self, n: int) -> torch.Tensor:
        return sample_noise(n, self.hparams.noise_dim, self.hparams.prior, device=self.device)

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
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()

    # --- validation: D on held-out data, and the small Parzen protocol ---

    def validation_step(self, batch, batch_idx):
        x = batch[0]
        real_logits = self.discriminator(x)
        fake_logits = self.discriminator(self.sample(len(x)))
        self.val_d_real.update(torch.sigmoid(real_logits))
        self.val_d_fake.update(torch.sigmoid(fake_logits))
        self.val_d_acc.update(torch.cat([(real_logits > 0).float(), (fake_logits < 0).float()]))
        if sum(map(len, self._val_images)) < self.hparams.parzen_valid + self.hparams.parzen_eval:
            self._val_images.append(x)
        self.log_dict({"val/d_real": self.val_d_real, "val/d_fake": self.val_d_fake, "val/d_acc": self.val_d_acc})

    def on_validation_epoch_end(self):
        images = torch.cat(self._val_images) if self._val_images else None
        self._val_images = []
        if images is None or len(images) < 2:
            return
        n_valid = min(self.hparams.parzen_valid, len(images) // 2)
        samples = self.generator(self.fixed_z)
        sigma, _ = select_sigma(samples, images[:n_valid], self.hparams.parzen_sigmas)
        ll = parzen_log_likelihood(images[n_valid:n_valid + self.hparams.parzen_eval], samples, sigma)
        self.log_dict({"val/parzen_ll": ll.mean(), "val/parzen_sigma": sigma}, sync_dist=True)

    # --- test: the paper's full Parzen protocol ---

    def on_test_epoch_start(self):
        dm = self.trainer.datamodule
        if dm is None:
            raise RuntimeError("GAN.test needs a datamodule: the Parzen bandwidth is chosen on its validation set")
        valid = []
        for batch in dm.val_dataloader():
            batch = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, self.device, 0), 0)
            valid.append(batch[0])
            if sum(map(len, valid)) >= self.hparams.test_valid:
                break
        valid = torch.cat(valid)[: self.hparams.test_valid]
        g = torch.Generator(device=self.device).manual_seed(1)
        z = sample_noise(self.hparams.test_samples, self.hparams.noise_dim, self.hparams.prior, self.device, g)
        self._test_samples = torch.cat([self.generator(zb) for zb in z.split(1000)])
        self._test_sigma, self._sigma_curve = select_sigma(self._test_samples, valid, self.hparams.parzen_sigmas)

    def test_step(self, batch, batch_idx):
        self.test_parzen.update(parzen_log_likelihood(batch[0], self._test_samples, self._test_sigma))

    def on_test_epoch_end(self):
        mean, stderr = self.test_parzen.compute()
        self.log_dict({"test/parzen_ll": mean.float(), "test/parzen_ll_stderr": stderr.float(),
                       "test/parzen_sigma": self._test_sigma})
        self.test_parzen.reset()

    def configure_optimizers(self):
        hp = self.hparams

        def make(module, lr):
            params = list(module.parameters())
            if hp.optimizer == "sgd":
                return torch.optim.SGD(params, lr=lr, momentum=hp.momentum)
            fused = all(p.device.type in ("cpu", "cuda") for p in params)  # one kernel for all tensors
            return torch.optim.Adam(params, lr=lr, betas=tuple(hp.betas), fused=fused)

        opt_d, opt_g = make(self.discriminator, hp.lr * hp.d_lr_scale), make(self.generator, hp.lr)
        if hp.lr_decay == 1.0:
            return [opt_d, opt_g]
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(opt, hp.lr_decay) for opt in (opt_d, opt_g)]
        return [opt_d, opt_g], schedulers
