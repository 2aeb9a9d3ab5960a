from lightning_models.autoencoders import (Autoencoder, ContractiveAutoencoder, DenoisingAutoencoder,
                                           KSparseAutoencoder, SparseAutoencoder)
from lightning_models.gan import GAN
from lightning_models.memn2n import MemN2N
from lightning_models.ntm import NTM, LSTMBaseline
from lightning_models.stn import STNClassifier
from lightning_models.vae import VAE
from lightning_models.vse import VSE

__all__ = ["GAN", "MemN2N", "NTM", "LSTMBaseline", "STNClassifier", "VAE", "VSE", "Autoencoder",
           "ContractiveAutoencoder", "DenoisingAutoencoder", "KSparseAutoencoder", "SparseAutoencoder"]
