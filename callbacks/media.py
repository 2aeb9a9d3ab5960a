"""Log an image to whatever logger the run uses: W&B, TensorBoard, or PNG files otherwise.

Callers run on global rank zero only (media are not reduced across processes).
"""

import io
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.seed import isolate_rng
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
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
            captions = {"caption": [caption]} if caption else {}  # Lightning's log_image fails on caption=None
            logger.log_image(key, [to_pil_image(grid)], step=step, **captions)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)
        elif not logged_to_files and getattr(logger, "media", True):  # (not dl4's MetricsFile: callbacks/faults.py)
            logged_to_files = True
            folder = Path(logger.log_dir if getattr(logger, "log_dir", None) else trainer.default_root_dir)
            save_image(grid, _file_for(folder, key, step))
    if not trainer.loggers:
        save_image(grid, _file_for(Path(trainer.default_root_dir), key, step))


def log_table(trainer: Trainer, key: str, rows: list[dict]) -> None:
    """Log rows of {column: value} as a table: a ``wandb.Table`` for W&B (a (3, H, W) image tensor in [0, 1] as a
    ``wandb.Image``), else a CSV file with the run's files (images saved as PNGs beside it, named in the cell)."""
    columns = list(rows[0])
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            cell = lambda v: wandb.Image(to_pil_image(v.clamp(0, 1))) if torch.is_tensor(v) else v  # noqa: E731
            logger.log_table(key, columns=columns, data=[[cell(v) for v in r.values()] for r in rows],
                             step=trainer.global_step)
            return
    import csv

    name = f"{key.replace('/', '_')}_step{trainer.global_step:07d}"
    out = []
    for i, row in enumerate(rows):
        out.append({})
        for column, value in row.items():
            if torch.is_tensor(value):
                image = run_file(trainer, f"{name}_{i}_{column}.png")
                save_image(value, image)
                value = image.name
            out[-1][column] = value
    with open(run_file(trainer, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(out)


def run_file(trainer: Trainer, name: str) -> Path:
    """A path for a raw file kept with the run: the W&B run's files (uploaded by ``wandb sync``), else the
    logger's ``log_dir/media``, else ``default_root_dir/media``."""
    folder = None
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            folder = Path(logger.experiment.dir)
            break
        if getattr(logger, "log_dir", None) and getattr(logger, "media", True):
            folder = Path(logger.log_dir) / "media"
    folder = folder or Path(trainer.default_root_dir) / "media"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def figure_to_image(fig) -> torch.Tensor:
    """A matplotlib figure -> (3, H, W) tensor in [0, 1], for ``log_image``; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return pil_to_tensor(Image.open(buf).convert("RGB")).float() / 255


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (callbacks draw on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _file_for(folder: Path, key: str, step: int) -> Path:
    path = folder / "media" / key.replace("/", "_") / f"step_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def evaluating(pl_module: L.LightningModule):
    """Eval mode and no gradients while a picture is drawn; the module's mode is restored after."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        pl_module.train(was_training)


class EveryNEpochs(L.Callback):
    """Calls ``draw(trainer, pl_module)`` after every ``every_n_epochs``-th validation epoch (not the sanity check),
    on global rank zero only, in eval mode without gradients. A picture's fixed input comes from
    ``trainer.datamodule.fixed_batch(n, seed, device)``, the same examples every time. Drawing leaves the global
    random generators as it found them (``isolate_rng``): a picture that samples must not change the training
    that follows, nor make rank zero's random numbers differ from the other ranks'."""

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = every_n_epochs

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        with evaluating(pl_module), isolate_rng():
            self.draw(trainer, pl_module)

    def draw(self, trainer, pl_module) -> None:
        raise NotImplementedError


class FixedNoiseSamples(EveryNEpochs):
    """``pl_module.sample(z=z)`` for the same noise batch z ~ p(z) every time (drawn by ``pl_module.noise(n,
    generator)`` from ``seed``), so the grids of successive epochs compare: a VAE's prior samples, a GAN's G(z)."""

    key, caption = "media/samples", "x = sample(z), the same z every epoch"

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 64, seed: int = 0):
        super().__init__(every_n_epochs)
        self.num_samples, self.seed = num_samples, seed

    def draw(self, trainer, pl_module):
        z = pl_module.noise(self.num_samples, generator=torch.Generator().manual_seed(self.seed))
        log_image(trainer, self.key, image_grid(pl_module.sample(z=z)), self.caption)
