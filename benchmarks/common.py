"""What the benchmark scripts share: the data root, a run built from a config as `dl4 fit` builds it, a timer
and the results table, printed as Markdown and written as JSON so that a table in the docs can be regenerated
and checked against its file."""

import importlib
import json
import os
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMMAND = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])  # before build_run clears sys.argv
QUIET = ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.callbacks=[]"]  # (the config's weight averaging stays)


def default_data_dir() -> str:
    """``DL4_DATA_DIR``, else ``../shared/data`` beside the checkout where it exists, else ``./data``; set for
    every run this process builds."""
    if "DL4_DATA_DIR" not in os.environ:
        shared = REPO.parent / "shared" / "data"
        os.environ["DL4_DATA_DIR"] = str(shared) if shared.is_dir() else "./data"
    return os.environ["DL4_DATA_DIR"]


def averaging_callbacks(config: str | Path) -> list[str]:
    """The config's weight-averaging callbacks (they decide which weights validation and the test see), as dl4
    arguments: QUIET drops the config's other callbacks (checkpoints, pictures), and build_run keeps these."""
    from lightning.pytorch.callbacks import WeightAveraging

    kept = []
    for spec in (yaml.safe_load(Path(config).read_text()).get("trainer") or {}).get("callbacks") or []:
        path = spec["class_path"] if isinstance(spec, dict) else spec
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module or "lightning.pytorch.callbacks"), name, None)
        if isinstance(cls, type) and issubclass(cls, WeightAveraging):  # (a short name Lightning lacks: dl4 pictures)
            init_args = spec.get("init_args") or {} if isinstance(spec, dict) else {}
            kept += [f"--trainer.callbacks+={path}",  # values as JSON: null, true and lists parse as the YAML did
                     *(f"--trainer.callbacks.{k}={json.dumps(v)}" for k, v in init_args.items())]
    return kept


def build_run(config: str | Path | None, overrides: list[str] = ()):
    """The config's model, datamodule and trainer, built by the real CLI (``DL4CLI(run=False)``) with the
    runtime defaults of `dl4`; call ``cli.trainer.fit(cli.model, datamodule=cli.datamodule)`` on it."""
    from dl4.cli import DL4CLI, configure_runtime

    configure_runtime()
    default_data_dir()
    sys.argv = sys.argv[:1]  # the arguments are these, not the calling script's command line
    overrides = list(overrides)
    if config and "--trainer.callbacks=[]" in overrides:  # QUIET: keep what decides the numbers
        at = overrides.index("--trainer.callbacks=[]") + 1
        overrides[at:at] = averaging_callbacks(config)
    args = (["--config", str(config)] if config else []) + overrides
    return DL4CLI(args=args, run=False)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def write_json(path: str | Path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def markdown_table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, columns: list[str], rows: list[list], meta: dict | None = None,
           out: str | Path | None = None) -> Path:
    """Print the table in Markdown and write it, with ``meta`` (command, machine, date), as JSON to ``out``
    (default ``benchmarks/results/<name>.json``)."""
    import platform
    from datetime import date

    import torch

    print(markdown_table(columns, rows), flush=True)
    meta = {"command": f"python {COMMAND}", "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads", **(meta or {})}
    path = write_json(out or REPO / "benchmarks" / "results" / f"{name}.json",
                      {"meta": meta, "columns": columns, "rows": rows})
    print(f"(written to {path})")
    return path
