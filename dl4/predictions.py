"""What a model's ``predict_step`` returns to ``dl4 predict``'s writer (``callbacks/predictions.py``), and the
predict batch that asks a generative model for samples; shared by the models and the datamodules."""

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass
class Predictions:
    """One batch's predictions: ``records[i]``, ``arrays[key][i]`` and ``pictures[kind][i]`` belong to its i-th
    input. Pictures are (C, H, W) images, float in [0, 1] or uint8, of one or more kinds (``reconstruction``,
    ``sample``, ``interpolation``): each kind gets its folder ``pictures/<kind>/`` and its grid ``<kind>_grid.png``."""

    records: list[dict]
    arrays: dict[str, list[torch.Tensor] | torch.Tensor] = field(default_factory=dict)
    pictures: dict[str, list[torch.Tensor] | torch.Tensor] = field(default_factory=dict)


class NoiseSeeds(NamedTuple):
    """A predict batch asking a generative model for samples: sample i is drawn from the noise of ``seeds[i]``."""

    seeds: torch.Tensor


def seeded_noise(seeds: torch.Tensor, draw) -> torch.Tensor:
    """One noise vector per seed, ``draw(generator)`` each from a CPU generator seeded by it (on any device and in
    any batch, seed s gives the same z), stacked."""
    return torch.cat([draw(torch.Generator().manual_seed(int(s))) for s in seeds.tolist()])
