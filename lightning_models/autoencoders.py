"""The autoencoder family on images: plain, denoising, sparse (KL and top-k) and contractive.

Every model is x -> h = phi(x) -> x_hat = psi(h), trained on reconstruction error plus its own regulariser;
the building blocks are in ``lightning_models.nn.autoencoders``.
"""

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from torchmetrics import MeanMetric

from lightning_models.nn.autoencoders import (Decoder, Encoder, adam, contractive_penalty_sigmoid,
                                              gaussian_noise, jacobian_frobenius_sq, kl_sparsity, masking_noise,
                                              reconstruction_error, top_k)
from lightning_models.train_logging import log_train_metrics


class Autoencoder(L.LightningModule):
    """Minimise ||x - psi(phi(x))||^2, or the Bernoulli cross-entropy for (near-)binary data.

    Args:
        hidden_dims: hidden layer sizes of the encoder (the decoder mirrors them).
        code_dim: size of the code h.
        activation: nonlinearity of the hidden layers.
        code_activation: nonlinearity of the code layer.
        loss: ``bce`` or ``mse`` reconstruction error, summed over pixels, averaged over images.
        lr: Adam learning rate.
        input_shape: (C, H, W) of the images.
    """

    def __init__(self, hidden_dims: Sequence[int] = (512, 256), code_dim: int = 32, activation: str = "relu",
                 code_activation: str = "identity", loss: Literal["bce", "mse"] = "bce", lr: float = 1e-3,
                 input_shape: Sequence[int] = (1, 28, 28)):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = Encoder(input_shape, hidden_dims, code_dim, activation, code_activation)
        self.decoder = Decoder(code_dim, list(reversed(hidden_dims)), input_shape, activation)
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
        return self.encode(batch[0])

    def configure_optimizers(self):
        return adam(self, self.hparams.lr)


class DenoisingAutoencoder(Autoencoder):
    """Reconstruct the clean x from a corrupted x_tilde (Vincent et al. 2008).

    Args:
        noise: ``mask`` (a fraction ``noise_level`` of the pixels set to 0) or ``gaussian`` (additive noise).
        noise_level: the masking rate, or the Gaussian noise's standard deviation.
    """

    def __init__(self, noise: Literal["mask", "gaussian"] = "mask", noise_level: float = 0.3, **kwargs):
        super().__init__(**kwargs)
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
        hidden_dims: hidden layers before the code (none: one layer, as in the lecture).
        code_dim: code size, larger than the 784 inputs.
    """

    def __init__(self, rho: float = 0.05, beta: float = 3.0, hidden_dims: Sequence[int] = (), code_dim: int = 1000,
                 **kwargs):
        super().__init__(hidden_dims=hidden_dims, code_dim=code_dim, code_activation="sigmoid", **kwargs)
        self.save_hyperparameters()

    def penalty(self, x, h):
        return self.hparams.beta * kl_sparsity(h, self.hparams.rho)


class KSparseAutoencoder(Autoencoder):
    """Overcomplete linear code of which only the k largest activations are kept (Makhzani & Frey 2013).

    Args:
        k: code units kept per image.
        hidden_dims: hidden layers before the code.
        code_dim: code size.
    """

    def __init__(self, k: int = 25, hidden_dims: Sequence[int] = (), code_dim: int = 1000, **kwargs):
        super().__init__(hidden_dims=hidden_dims, code_dim=code_dim, **kwargs)
        if not 0 < k <= code_dim:
            raise ValueError(f"model.k must be in 1..code_dim={code_dim}, got {k}")
        self.save_hyperparameters()

    def encode(self, x):
        return top_k(self.encoder(x), self.hparams.k)


class ContractiveAutoencoder(Autoencoder):
    """Reconstruction error + lambda * ||J_h(x)||_F^2 (Rifai et al. 2011).

    Args:
        contraction: lambda, the weight of the Jacobian penalty.
        jacobian: ``closed_form`` (one sigmoid encoder layer, the paper's setting) or ``autograd`` (any encoder).
        hidden_dims: hidden layers before the code.
        code_dim: code size.
        code_activation: nonlinearity of the code layer.
    """

    def __init__(self, contraction: float = 0.1, jacobian: Literal["closed_form", "autograd"] = "closed_form",
                 hidden_dims: Sequence[int] = (), code_dim: int = 1000, code_activation: str = "sigmoid", **kwargs):
        if jacobian == "closed_form" and (len(hidden_dims) > 0 or code_activation != "sigmoid"):
            raise ValueError("model.jacobian='closed_form' needs one sigmoid encoder layer (hidden_dims: [], "
                             "code_activation: sigmoid); use jacobian: autograd for other encoders")
        super().__init__(hidden_dims=hidden_dims, code_dim=code_dim, code_activation=code_activation, **kwargs)
        self.save_hyperparameters()

    def penalty(self, x, h):
        if self.hparams.jacobian == "closed_form":
            frob = contractive_penalty_sigmoid(h, self.encoder.input_layer.weight)
        else:
            frob = jacobian_frobenius_sq(self.encoder, x)
        return self.hparams.contraction * frob.mean()
