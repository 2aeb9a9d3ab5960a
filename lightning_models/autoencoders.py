"""The autoencoder family on images: plain, denoising, sparse (KL and top-k) and contractive.

Every model is x -> h = phi(x) -> x_hat = psi(h), trained on reconstruction error plus its own regulariser;
the building blocks are in ``lightning_models.nn.autoencoders``.
"""

from typing import Literal

import torch
from torch import nn
from torchmetrics import MeanMetric

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from dl4.errors import ConfigError, check_fraction, check_positive
from lightning_models.nn.autoencoders import (Encoder, contractive_penalty_sigmoid, gaussian_noise,
                                              jacobian_frobenius_sq, kl_sparsity, masking_noise, mirrored_mlps,
                                              reconstruction_error, top_k)
from dl4.predictions import Predictions
from lightning_models.checkpoints import ConfiguredNetworks
from lightning_models.optim import fused_adam, optimizer_with_schedule, trainable
from lightning_models.train_logging import log_train_metrics


class Autoencoder(ConfiguredNetworks):
    """Minimise ||x - psi(phi(x))||^2, or the Bernoulli cross-entropy for (near-)binary data.

    Args:
        encoder: phi, images (B, C, H, W) -> codes (B, code_dim); default ``Encoder`` 784-512-256-32 (ReLU).
        decoder: psi, codes -> pixel logits (B, C, H, W); default the mirrored ``Decoder``.
        loss: ``bce`` or ``mse`` reconstruction error, summed over pixels, averaged over images.
        optimizer, lr_scheduler: default Adam at 1e-3 (fused), no schedule (``lightning_models/optim.py``).
    The subclasses take these too (``**kwargs``).
    """

    default_nets = dict(hidden_dims=(512, 256), code_dim=32)  # the nets built when none are passed

    def __init__(self, encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 loss: Literal["bce", "mse"] = "bce", optimizer: OptimizerCallable | None = None,
                 lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.optimizer, self.lr_scheduler = optimizer or fused_adam(1e-3), lr_scheduler
        if encoder is None and decoder is None:
            encoder, decoder = mirrored_mlps(**self.default_nets)
        elif encoder is None or decoder is None:
            raise ConfigError("model.init_args: pass both encoder and decoder, or neither (the default nets)")
        code_dims = getattr(encoder, "code_dim", None), getattr(decoder, "code_dim", None)
        if None not in code_dims and code_dims[0] != code_dims[1]:
            raise ConfigError(f"model.init_args.encoder.init_args.code_dim ({code_dims[0]}) and "
                             f"decoder.init_args.code_dim ({code_dims[1]}) differ: the decoder reads the encoder's code")
        self.encoder, self.decoder = encoder, decoder
        self.val_recon, self.test_recon = MeanMetric(), MeanMetric()

    # --- the model, usable without a trainer ---
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The training input made from x (the identity here; the denoising autoencoder corrupts it)."""
        return x

    def penalty(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The regulariser added to the reconstruction error (none here)."""
        return h.new_zeros(())

    # --- training ---
    def training_step(self, batch, batch_idx):
        x, _ = batch
        h = self.encode(self.corrupt(x))
        recon = reconstruction_error(self.decoder(h), x, self.hparams.loss).mean()
        penalty = self.penalty(x, h)
        loss = recon + penalty
        log_train_metrics(self, {"train/loss": loss, "train/recon": recon, "train/penalty": penalty})
        return loss

    def _evaluate(self, batch, metric: MeanMetric, stage: str):
        x, _ = batch
        metric.update(reconstruction_error(self.decoder(self.encode(x)), x, self.hparams.loss))
        self.log(f"{stage}/recon", metric, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_recon, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_recon, "test")

    def predict_step(self, batch, batch_idx):
        """``dl4 predict``: per image its code h, its reconstruction and the reconstruction error."""
        x, labels = batch
        h = self.encode(x)
        logits = self.decoder(h)
        x_hat = torch.sigmoid(logits)
        errors = reconstruction_error(logits, x, self.hparams.loss).tolist()
        records = [{"recon_error": e, **({"label": y} if y >= 0 else {})} for e, y in zip(errors, labels.tolist())]
        return Predictions(records, {"input": x, "reconstruction": x_hat, "code": h},
                           {"reconstruction": torch.cat([x, x_hat], dim=-1)})  # the input, then its reconstruction

    def configure_optimizers(self):
        return optimizer_with_schedule(trainable(self), self.optimizer, self.lr_scheduler)


class DenoisingAutoencoder(Autoencoder):
    """Reconstruct the clean x from a corrupted x_tilde (Vincent et al. 2008).

    Args:
        noise: ``mask`` (a fraction ``noise_level`` of the pixels set to 0) or ``gaussian`` (additive noise).
        noise_level: the masking rate, or the Gaussian noise's standard deviation.
    """

    def __init__(self, noise: Literal["mask", "gaussian"] = "mask", noise_level: float = 0.3, **kwargs):
        super().__init__(**kwargs)
        if noise == "mask":
            check_fraction("model", noise_level=noise_level)
        else:
            check_positive("model", noise_level=noise_level)
        self.save_hyperparameters()

    def corrupt(self, x):
        if self.hparams.noise == "mask":
            return masking_noise(x, self.hparams.noise_level)
        return gaussian_noise(x, self.hparams.noise_level)


class SparseAutoencoder(Autoencoder):
    """Overcomplete sigmoid code with the sparsity penalty beta * sum_j KL(rho || rho_hat_j).

    Args:
        rho: target mean activation of every code unit.
        beta: weight of the sparsity penalty.
        encoder, decoder: default one layer of 1000 sigmoid units (larger than the 784 inputs), as in the lecture;
            the code must lie in [0, 1] (``code_activation: sigmoid``).
    """

    default_nets = dict(hidden_dims=(), code_dim=1000, code_activation="sigmoid")

    def __init__(self, rho: float = 0.05, beta: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 < rho < 1:
            raise ConfigError(f"model.rho must be in (0, 1) (the KL penalty is infinite at 0 and 1), got {rho}")
        if beta < 0:
            raise ConfigError(f"model.beta must be >= 0, got {beta}")
        if getattr(self.encoder, "code_activation", "sigmoid") != "sigmoid":
            raise ConfigError("model.init_args.encoder.init_args.code_activation must be sigmoid: the KL sparsity "
                             "penalty reads the code as mean activations in [0, 1]")
        self.save_hyperparameters()

    def penalty(self, x, h):
        return self.hparams.beta * kl_sparsity(h, self.hparams.rho)


class KSparseAutoencoder(Autoencoder):
    """Overcomplete linear code of which only the k largest activations are kept (Makhzani & Frey 2013).

    Args:
        k: code units kept per image.
        encoder, decoder: default one linear layer of 1000 code units and its mirror.
    """

    default_nets = dict(hidden_dims=(), code_dim=1000)

    def __init__(self, k: int = 25, **kwargs):
        super().__init__(**kwargs)
        code_dim = getattr(self.encoder, "code_dim", k)
        if not 0 < k <= code_dim:
            raise ConfigError(f"model.k must be in 1..code_dim={code_dim}, got {k}")
        self.save_hyperparameters()

    def encode(self, x):
        return top_k(self.encoder(x), self.hparams.k)


class ContractiveAutoencoder(Autoencoder):
    """Reconstruction error + lambda * ||J_h(x)||_F^2 (Rifai et al. 2011).

    Args:
        contraction: lambda, the weight of the Jacobian penalty.
        jacobian: ``closed_form`` (one sigmoid encoder layer, the paper's setting) or ``autograd`` (any encoder).
        encoder, decoder: default one layer of 1000 sigmoid units and its mirror.
    """

    default_nets = dict(hidden_dims=(), code_dim=1000, code_activation="sigmoid")

    def __init__(self, contraction: float = 0.1, jacobian: Literal["closed_form", "autograd"] = "closed_form",
                 encoder: nn.Module | None = None, **kwargs):
        one_sigmoid_layer = encoder is None or (isinstance(encoder, Encoder) and not encoder.hidden_dims
                                                and encoder.code_activation == "sigmoid")
        if jacobian == "closed_form" and not one_sigmoid_layer:
            raise ConfigError("model.jacobian='closed_form' needs one sigmoid encoder layer (an Encoder with "
                             "hidden_dims: [] and code_activation: sigmoid); use jacobian: autograd for other encoders")
        super().__init__(encoder=encoder, **kwargs)
        if contraction < 0:
            raise ConfigError(f"model.contraction must be >= 0, got {contraction}")
        self.save_hyperparameters()

    def penalty(self, x, h):
        if self.hparams.jacobian == "closed_form":
            frob = contractive_penalty_sigmoid(h, self.encoder.input_layer.weight)
        else:
            frob = jacobian_frobenius_sq(self.encoder, x)
        return self.hparams.contraction * frob.mean()
