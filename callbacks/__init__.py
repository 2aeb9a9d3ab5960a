from callbacks.autoencoders import DecoderFilters, LatentInterpolation, PriorSamples, ReconstructionGrid
from callbacks.gan import GANSamples, GANTrainingFigure, NoiseInterpolation
from callbacks.media import EveryNEpochs, image_grid, log_image

__all__ = ["DecoderFilters", "EveryNEpochs", "GANSamples", "GANTrainingFigure", "LatentInterpolation",
           "NoiseInterpolation", "PriorSamples", "ReconstructionGrid", "image_grid", "log_image"]
