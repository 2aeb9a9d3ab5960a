"""Log an image to whatever logger the run uses: W&B, TensorBoard, or PNG files otherwise.

Callers run on global rank zero only (media are not reduced across processes).
"""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image


def image_grid(images: torch.Tensor, nrow: int = 8, normalize: bool = False) -> torch.Tensor:
    """(N, C, H, W) images -> one (C, H', W') grid on the CPU, values in [0, 1]."""
    return make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0, normalize=normalize,
                     scale_each=normalize).clamp(0, 1)


def log_image(trainer: Trainer, key: str, grid: torch.Tensor, caption: str | None = None) -> None:
    """Log one (C, H, W) image in [0, 1] under ``key`` at the current global step, to every logger."""
    step = trainer.global_step
    logged_to_files = False
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [to_pil_image(grid)], step=step, caption=[caption] if caption else None)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)
        elif not logged_to_files:
            logged_to_files = True
            folder = Path(logger.log_dir if getattr(logger, "log_dir", None) else trainer.default_root_dir)
            save_image(grid, _file_for(folder, key, step))
    if not trainer.loggers:
        save_image(grid, _file_for(Path(trainer.default_root_dir), key, step))


def _file_for(folder: Path, key: str, step: int) -> Path:
    path = folder / "media" / key.replace("/", "_") / f"step_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class EveryNEpochs(L.Callback):
    """Keeps the first ``num_images`` validation images and calls ``draw`` every N validation epochs."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16):
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.images: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero:
            self.images = batch[0][: self.num_images].detach()

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.images is None or trainer.current_epoch % self.every_n_epochs:
            return
        with torch.no_grad():
            self.draw(trainer, pl_module, self.images)

    def draw(self, trainer, pl_module, x: torch.Tensor) -> None:
        raise NotImplementedError
