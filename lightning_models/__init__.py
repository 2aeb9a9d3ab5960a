from lightning_models.autoencoders import (Autoencoder, ContractiveAutoencoder, DenoisingAutoencoder,
                                           KSparseAutoencoder, SparseAutoencoder)
from lightning_models.vae import VAE

__all__ = ["VAE", "Autoencoder", "ContractiveAutoencoder", "DenoisingAutoencoder", "KSparseAutoencoder",
           "SparseAutoencoder"]
