from lightning_models.autoencoders import (Autoencoder, ContractiveAutoencoder, DenoisingAutoencoder,
                                           KSparseAutoencoder, SparseAutoencoder)
from lightning_models.gan import GAN
from lightning_models.ntm import NTM, LSTMBaseline
from lightning_models.vae import VAE

__all__ = ["GAN", "NTM", "LSTMBaseline", "VAE", "Autoencoder", "ContractiveAutoencoder", "DenoisingAutoencoder",
           "KSparseAutoencoder", "SparseAutoencoder"]
