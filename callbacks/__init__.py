from callbacks.autoencoders import DecoderFilters, LatentInterpolation, PriorSamples, ReconstructionGrid
from callbacks.gan import GANSamples, GANTrainingFigure, MomentumRamp, NoiseInterpolation
from callbacks.media import EveryNEpochs, image_grid, log_image
from callbacks.memn2n import MemN2NAttention
from callbacks.ntm import CopyGeneralisation, NTMMemoryTrace
from callbacks.stn import TransformerPictures

__all__ = ["CopyGeneralisation", "DecoderFilters", "EveryNEpochs", "GANSamples", "GANTrainingFigure",
           "LatentInterpolation", "MemN2NAttention", "MomentumRamp", "NoiseInterpolation", "NTMMemoryTrace",
           "PriorSamples", "ReconstructionGrid", "TransformerPictures", "image_grid", "log_image"]
