from callbacks.autoencoders import DecoderFilters, LatentInterpolation, PriorSamples, ReconstructionGrid
from callbacks.faults import DivergenceGuard, TimeBudget
from callbacks.gan import GANSamples, GANTrainingFigure, MomentumRamp, NoiseInterpolation
from callbacks.media import EveryNEpochs, image_grid, log_image
from callbacks.memn2n import MemN2NAttention
from callbacks.ntm import CopyGeneralisation, NTMMemoryTrace
from callbacks.progress import TimedProgressBar
from callbacks.stn import TransformerPictures
from callbacks.vse import EmbeddingArithmetic, EmbeddingMap, RetrievalExamples

__all__ = ["CopyGeneralisation", "DecoderFilters", "EmbeddingArithmetic", "EmbeddingMap", "EveryNEpochs",
           "GANSamples", "GANTrainingFigure", "LatentInterpolation", "MemN2NAttention", "MomentumRamp",
           "NoiseInterpolation", "NTMMemoryTrace", "PriorSamples", "ReconstructionGrid", "RetrievalExamples",
           "DivergenceGuard", "TimeBudget", "TimedProgressBar", "TransformerPictures", "image_grid", "log_image"]
