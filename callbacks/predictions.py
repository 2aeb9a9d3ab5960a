"""What ``dl4 predict`` writes: one folder per predict run, through Lightning's ``BasePredictionWriter``.

A model's ``predict_step`` returns ``Predictions`` (``dl4/predictions.py``) for its batch: one record (a JSON-able
dict) per input, arrays per input (reconstructions, codes, a memory trace) and pictures per input, if any.
Lightning gives the writer each batch's dataset indices; the writer keeps the rows, gathers them from every process
at the end (under DDP each process predicts its own share once, ``UnrepeatedDistributedSampler``), and rank zero
writes, in input order:

    predictions.jsonl   one line per input: its index, its name (the file, the sentence) and the record
    arrays.pt           {"index": ..., "input": names, key: the arrays, stacked when they have one shape}
    pictures/<kind>/<n>.png  each input's pictures (when the model draws them), and <kind>_grid.png of the first 64
    a W&B table         "predictions" with the same columns and the pictures, when the run logs to W&B

The folder is the run's, as the checkpoints of a fit run are (``<save_dir>/<project or name>/<run id or
version>/predictions``), or ``<default_root_dir>/predictions/<date-time>`` without a logger; ``output_dir`` sets it.
"""

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import save_image

from callbacks.media import image_grid
from dl4.predictions import Predictions


def run_folder(trainer) -> Path:
    """Where a predict run's files go: beside its logger's run, as a fit run's checkpoints, else a dated folder."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is not None and logger.save_dir is not None:
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(logger.save_dir) / str(logger.name) / version / "predictions"
    root = Path(trainer.default_root_dir) / "predictions"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = root / stamp, 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    return folder


def _cell(value):
    """A record's value for a table cell: numbers and text as they are, lists and dicts as JSON."""
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


class PredictionWriter(BasePredictionWriter):
    """Writes ``Predictions`` to files (and a W&B table) in input order; ``dl4 predict`` adds one to every run.

    Args:
        output_dir: the folder; default the run's (see the module's docstring).
        grid_size: pictures in each ``<kind>_grid.png``.
        max_pictures: inputs whose pictures are written (the first ones; the whole MNIST test set would be 10,000
            files): their arrays and records are all written.
    """

    def __init__(self, output_dir: str | None = None, grid_size: int = 64, max_pictures: int = 1000):
        super().__init__(write_interval="batch")
        self.output_dir, self.grid_size, self.max_pictures = output_dir, grid_size, max_pictures
        self.folder: Path | None = None
        self.rows: list[tuple[int, dict, dict, dict]] = []  # (index, record, arrays, pictures) per input

    def on_predict_start(self, trainer, pl_module):
        # after the inputs were read and checked (the datamodule's setup and predict_dataloader): a bad input has
        # stopped the run before this folder, or a W&B run, exists
        folder = str(self.output_dir or run_folder(trainer)) if trainer.is_global_zero else None
        self.folder = Path(trainer.strategy.broadcast(folder))
        self.rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not isinstance(prediction, Predictions):
            raise TypeError(f"{type(pl_module).__name__}.predict_step must return dl4.predictions.Predictions "
                            f"for dl4 predict's writer, got {type(prediction).__name__}")
        arrays, pictures = (
            {key: value.detach().cpu() if torch.is_tensor(value) else [v.detach().cpu() for v in value]
             for key, value in values.items()} for values in (prediction.arrays, prediction.pictures))
        for i, index in enumerate(batch_indices):  # one copy to the CPU a batch, then the rows are views
            self.rows.append((int(index), dict(prediction.records[i]), {key: v[i] for key, v in arrays.items()},
                              {kind: v[i] for kind, v in pictures.items()}))

    def on_predict_epoch_end(self, trainer, pl_module):
        rows = self.rows
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered = [None] * trainer.world_size
            dist.all_gather_object(gathered, rows)  # rank zero writes them all (pictures included)
            rows = [row for part in gathered for row in part]
        self.rows = []
        if trainer.is_global_zero:
            self.write(trainer, sorted(rows, key=lambda row: row[0]))

    def write(self, trainer, rows: list) -> None:
        names = getattr(trainer.datamodule, "predict_names", None)  # the inputs' names, and what the datamodule
        info = getattr(trainer.datamodule, "predict_info", None)  # knows of each (a given answer, a note)
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        records, pictures = [], {}
        digits = max(4, len(str(len(rows))))
        for n, (index, record, _, drawn) in enumerate(rows):
            drawn = drawn if n < self.max_pictures else {}
            record = {"index": index, "input": names[index] if names else str(index),
                      **(info[index] if info else {}), **record}
            for kind, picture in drawn.items():
                (folder / "pictures" / kind).mkdir(parents=True, exist_ok=True)
                name = f"pictures/{kind}/{index:0{digits}d}.png"
                picture = picture.float() / 255 if picture.dtype == torch.uint8 else picture.float().clamp(0, 1)
                save_image(picture, folder / name)
                record[kind] = name
                pictures.setdefault(kind, []).append(picture)
            records.append(record)
        with open(folder / "predictions.jsonl", "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        arrays = {"index": [r["index"] for r in records], "input": [r["input"] for r in records]}
        for key in rows[0][2] if rows else []:
            values = [row[2][key] for row in rows]
            arrays[key] = torch.stack(values) if len({v.shape for v in values}) == 1 else values
        torch.save(arrays, folder / "arrays.pt")
        written = ["predictions.jsonl", "arrays.pt"]
        for kind, shown in pictures.items():
            shown = shown[:self.grid_size]
            if len({p.shape for p in shown}) == 1:
                wide = shown[0].shape[-1] > 2 * shown[0].shape[-2]  # strips (an interpolation): one a row
                save_image(image_grid(torch.stack(shown), nrow=1 if wide else 8), folder / f"{kind}_grid.png")
                written.append(f"{kind}_grid.png")
        if pictures:
            written.append("pictures/")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self.log_table(logger, records, folder, list(pictures))
        scored = [r["correct"] for r in records if "correct" in r]
        accuracy = f"\n  accuracy: {100 * sum(scored) / len(scored):.1f}% of the {len(scored)} inputs with an answer" \
            if scored else ""
        print(f"Predictions: {folder}\n  {len(records)} inputs: {', '.join(written)}{accuracy}", flush=True)

    @staticmethod
    def log_table(logger: WandbLogger, records: list[dict], folder: Path, kinds: list[str]) -> None:
        import wandb

        columns = list(dict.fromkeys(key for record in records for key in record))
        data = [[wandb.Image(str(folder / r[c])) if c in kinds and r.get(c) else _cell(r.get(c))
                 for c in columns] for r in records]
        logger.log_table("predictions", columns=columns, data=data)
