from callbacks.autoencoders import DecoderFilters, LatentInterpolation, PriorSamples, ReconstructionGrid
from callbacks.media import image_grid, log_image

__all__ = ["DecoderFilters", "LatentInterpolation", "PriorSamples", "ReconstructionGrid", "image_grid", "log_image"]
