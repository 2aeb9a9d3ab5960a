"""Per-step training scalars, logged only on the steps the logger writes."""

import lightning as L
import torch

from dl4.internals import logger_writes_this_step


def log_train_metrics(module: L.LightningModule, metrics: dict[str, torch.Tensor]) -> None:
    """``module.log_dict(metrics)`` on the steps where Lightning sends metrics to the logger (every
    ``trainer.log_every_n_steps``, and the last step), skipped on the others, whose values no logger would see.

    Each ``self.log`` call costs about 0.5 ms of Python on a CPU (Lightning moves its result object to the device
    every call), which for a small model is as much as the step itself. The test is Lightning's own, so it stays
    right with several optimizers or gradient accumulation (``dl4/internals.py``: it has no public name).
    """
    if logger_writes_this_step(module.trainer):
        module.log_dict(metrics)
