"""Every model of the autoencoder family learns: 300 Adam steps (batch 128) on real MNIST, a few seconds each.

Untrained, every model's validation reconstruction error is ~545 nats per image (cross-entropy over 784 grey
pixels); the thresholds below are what the training must reach, far under that.
"""

import lightning as L
import pytest
import torch

from lightning_models import (VAE, Autoencoder, ContractiveAutoencoder, DenoisingAutoencoder, KSparseAutoencoder,
                              SparseAutoencoder)
from lightning_models.nn.autoencoders import reconstruction_error

STEPS = 300


@torch.no_grad()
def val_error(model, mnist, n=2000):
    """Mean per-image reconstruction error (or -ELBO for the VAE) on the first n validation images."""
    x = mnist.val_set.tensors[0][:n].float() / 255
    if isinstance(model, VAE):
        return model.negative_elbo(x)[0].mean().item()
    return reconstruction_error(model.decoder(model.encode(x)), x, model.hparams.loss).mean().item()


def fit_and_validate(model, mnist):
    before = val_error(model.eval(), mnist)
    model.train()
    L.Trainer(max_steps=STEPS, limit_train_batches=STEPS, limit_val_batches=0, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(model, mnist)
    return before, val_error(model.eval(), mnist)


@pytest.mark.parametrize("model_class, threshold", [
    (Autoencoder, 150.0),
    (DenoisingAutoencoder, 165.0),
    (SparseAutoencoder, 250.0),
    (KSparseAutoencoder, 150.0),
    (ContractiveAutoencoder, 180.0),
])
def test_autoencoder_learns_to_reconstruct(model_class, threshold, mnist):
    L.seed_everything(0, verbose=False)
    before, after = fit_and_validate(model_class(), mnist)
    assert before > 500
    assert after < threshold, after


def test_sparse_autoencoder_reaches_its_target_activation(mnist):
    L.seed_everything(0, verbose=False)
    model = SparseAutoencoder(rho=0.05)
    fit_and_validate(model, mnist)
    with torch.no_grad():
        h = model.encode(mnist.val_set.tensors[0][:1000].float() / 255)
    assert h.mean() < 0.1  # from 0.5 at initialisation, pulled towards rho = 0.05


def test_vae_negative_elbo_drops(mnist):
    L.seed_everything(0, verbose=False)
    before, after = fit_and_validate(VAE(), mnist)
    assert before > 500
    assert after < 240, after


def test_vae_with_gaussian_likelihood_trains_stably(mnist):
    L.seed_everything(0, verbose=False)
    model = VAE(likelihood="gaussian")
    before, after = fit_and_validate(model, mnist)
    assert torch.isfinite(torch.tensor(after)) and after < before - 150, (before, after)  # nats per image
    assert model.sample(4).shape == (4, 1, 28, 28)
