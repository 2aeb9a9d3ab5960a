"""Pictures of the autoencoder family: reconstructions, prior samples, latent interpolations and filters.

Each callback draws every ``every_n_epochs`` validation epochs, on global rank zero, from a fixed batch: the
first validation images (``datamodule.fixed_batch``), so epochs are comparable.
"""

import math

import torch

from callbacks.media import EveryNEpochs, FixedNoiseSamples, image_grid, log_image


class ReconstructionGrid(EveryNEpochs):
    """Rows of inputs, (corrupted inputs for a denoising model,) and reconstructions of ``num_images`` images."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16):
        super().__init__(every_n_epochs)
        self.num_images = num_images

    def draw(self, trainer, pl_module):
        x = trainer.datamodule.fixed_batch(self.num_images, device=pl_module.device)[0]
        x_in = pl_module.corrupt(x) if hasattr(pl_module, "corrupt") else x
        rows = [x, x_in, pl_module(x_in)] if x_in is not x else [x, pl_module(x)]
        caption = "inputs / corrupted / reconstructions" if len(rows) == 3 else "inputs / reconstructions"
        log_image(trainer, "media/reconstructions", image_grid(torch.cat(rows).clamp(0, 1), nrow=len(x)), caption)


class PriorSamples(FixedNoiseSamples):
    """A VAE's mean images decoded from a fixed batch z ~ p(z) = N(0, I)."""

    key, caption = "media/prior_samples", "x ~ p(x|z), z ~ N(0, I)"


class LatentInterpolation(EveryNEpochs):
    """decode((1 - t) h_a + t h_b) for pairs of validation images a, b and t from 0 to 1."""

    def __init__(self, every_n_epochs: int = 1, num_pairs: int = 4, steps: int = 10):
        super().__init__(every_n_epochs)
        self.num_pairs, self.steps = num_pairs, steps

    def draw(self, trainer, pl_module):
        x = trainer.datamodule.fixed_batch(2 * self.num_pairs, device=pl_module.device)[0]
        h = pl_module.encode(x)
        h_a, h_b = h[0::2], h[1::2]
        t = torch.linspace(0, 1, self.steps, device=h.device).view(1, -1, 1)
        path = (1 - t) * h_a.unsqueeze(1) + t * h_b.unsqueeze(1)  # (pairs, steps, code)
        images = pl_module.decode(path.flatten(0, 1))
        log_image(trainer, "media/latent_interpolation", image_grid(images, nrow=self.steps),
                  "each row: decode((1 - t) h_a + t h_b), t = 0..1")


class DecoderFilters(EveryNEpochs):
    """The decoder's output weights as images: the pixel pattern each code unit writes (one per unit)."""

    def __init__(self, every_n_epochs: int = 1, num_filters: int = 100):
        super().__init__(every_n_epochs)
        self.num_filters = num_filters

    def draw(self, trainer, pl_module):
        weight = pl_module.decoder.output_layer.weight  # (pixels, code)
        image_shape = trainer.datamodule.fixed_batch(1)[0].shape[1:]  # (C, H, W) of the data
        filters = weight.T[: self.num_filters].reshape(-1, *image_shape)
        nrow = math.ceil(math.sqrt(len(filters)))  # a square grid
        log_image(trainer, "media/decoder_filters", image_grid(filters, nrow=nrow, normalize=True),
                  "columns of the decoder's output weight, each scaled to [0, 1]")
