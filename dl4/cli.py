"""``dl4 fit|validate|test|predict``: LightningCLI over every model and datamodule of the project (the console
script itself, with ``dl4 sweep`` and ``dl4 data``, is ``dl4/console.py``).

    dl4 fit --config configs/vae_mnist.yaml
    dl4 test --config configs/vae_mnist.yaml --ckpt_path runs/dl4/<run>/checkpoints/last.ckpt
    dl4 fit --config configs/vae_mnist.yaml --print_config

Runs log to Weights & Biases, offline unless the user is logged in (WANDB_API_KEY or ~/.netrc) or sets
WANDB_MODE; an offline run never touches the network and can be uploaded later with ``wandb sync``.
"""

import logging
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Literal

import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter, ProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO

from jsonargparse import ArgumentError  # what jsonargparse raises with exit_on_error=False

import callbacks  # noqa: F401  (makes the callbacks' short names known to the parser)
import datamodules  # noqa: F401
import lightning_models  # noqa: F401
from callbacks.distributed import BroadcastBuffers
from callbacks.predictions import PredictionWriter
from callbacks.progress import TimedProgressBar
from callbacks.faults import DivergenceGuard, MetricsFile, PreemptionCheckpoint, RunState, SafeCheckpointIO
from dl4.checkpoints import (CheckpointError, check_model_class, checkpoint_folders, drop_key, explicit_model_keys,
                             find_last, read_checkpoint)
from dl4.config_errors import check_before_parsing, explain
from dl4.errors import ConfigError
from dl4.internals import CheckpointHparamsHook

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
               "init_args": {"project": "dl4", "save_dir": "runs"}},
}


class SaveConfigToRun(SaveConfigCallback):
    """Stores the full resolved config with the run: as the W&B run's config and as ``config.yaml`` in its files.

    With W&B the logger's ``save_dir`` is shared by all runs, so the file goes into the run's own folder instead;
    other loggers get ``config.yaml`` in their versioned ``log_dir``. A second run never fails on an existing file.
    """

    def setup(self, trainer, pl_module, stage):
        if not trainer.loggers:  # logger: false (benchmarks): no run to keep it with, and no stray ./config.yaml
            return
        if isinstance(trainer.logger, WandbLogger):
            self.save_to_log_dir = False
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage):
        config = self.parser.dump(self.config, skip_unset=False)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams(yaml.safe_load(config))
                Path(logger.experiment.dir, "config.yaml").write_text(config)


class DL4CLI(CheckpointHparamsHook):
    def __init__(self, args=None, run: bool = True):
        """``run=False`` only parses and builds (no subcommand): benchmarks then call ``trainer.fit``/``test``."""
        self.command_line = list(sys.argv[1:] if args is None else args)
        self.subcommand_parsers = []
        super().__init__(
            subclass_mode_model=True, subclass_mode_data=True,
            save_config_callback=SaveConfigToRun, save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            # errors come back as exceptions (dl4/config_errors.py makes them one line); no abbreviated flags:
            # argparse would read a mistyped --trainer.max_epoch=3 as --trainer.max_epochs
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False, "allow_abbrev": False},
            auto_configure_optimizers=False,  # each model takes its own (model.init_args.optimizer)
            args=args, run=run,
        )

    def add_arguments_to_parser(self, parser):
        parser.add_argument("--float32_matmul_precision", type=Literal["highest", "high", "medium"],
                            default="highest", help="torch.set_float32_matmul_precision: 'high'/'medium' let "
                            "matrix products use TF32 (NVIDIA) or bfloat16 (CPUs with AMX) internally")
        self.subcommand_parsers.append(parser)  # their keys are what a mistyped one is compared with

    def parse_arguments(self, parser, args):
        """Parses, and turns every mistake into one ``ConfigError`` line (``dl4/config_errors.py``)."""
        check_before_parsing(self.command_line)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            keys = {k for p in self.subcommand_parsers for k in p.get_defaults().keys()}
            raise ConfigError(explain(str(err), keys, self.command_line)) from None

    def checkpoint_settings(self):
        """Checks ``--ckpt_path`` before anything is built (see ``dl4/checkpoints.py``): the file is a Lightning
        checkpoint of the config's model; ``last`` is the newest ``last.ckpt`` of this model among the config's runs;
        the checkpoint's model settings replace the config's, except those given as ``--model.*`` flags (Lightning
        lets the checkpoint override those too); and ``fit`` resumes the checkpoint's run (W&B run id, or CSV and
        TensorBoard version), so it continues in the same run and checkpoint folder."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if not config or not config.get("ckpt_path"):
            return
        configured = config.model.class_path
        path = config.ckpt_path
        if path == "last":
            path = str(find_last(checkpoint_folders(config.trainer), configured))
            print(f"{'Resuming from' if subcommand == 'fit' else 'Checkpoint:'} {path}", flush=True)
        elif path in ("best", "hpc", "registry"):
            raise CheckpointError(f"--ckpt_path {path} only means something inside one Python process: give a "
                                  "checkpoint file, or 'last'")
        config.ckpt_path = path
        ckpt = read_checkpoint(path)
        check_model_class(ckpt, path, configured)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        for key in explicit_model_keys(self.command_line):
            drop_key(hparams, key)
        if hparams:
            model = {"class_path": configured, "init_args": hparams}
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        if subcommand == "fit":
            resume_run(self.config.fit.trainer, (ckpt.get("callbacks") or {}).get("RunState", {}).get("run", {}),
                       ckpt.get("global_step"))

    def instantiate_trainer(self, **kwargs):
        """Every run gets the fault callbacks (``callbacks/faults.py``), ``BroadcastBuffers`` (under DDP every process
        validates rank zero's model, ``callbacks/distributed.py``), ``SafeCheckpointIO``, with a logger a
        ``MetricsFile`` that keeps every logged row on disk, and with a progress bar (unless the config gives one)
        a ``TimedProgressBar`` (``callbacks/progress.py``); ``dl4 predict`` a ``PredictionWriter``
        (``callbacks/predictions.py``)."""
        config = self.config_init.get(self.subcommand, self.config_init).get("trainer") or {}
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        guard = [] if any(isinstance(c, DivergenceGuard) for c in configured) else [DivergenceGuard()]
        every_run = [*configured, *guard, PreemptionCheckpoint(), RunState(), BroadcastBuffers()]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            every_run.append(TimedProgressBar())  # Lightning's bar, redrawn a few times a second at most
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in configured):
            every_run.append(PredictionWriter())  # the predictions, as files and a W&B table
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        loggers = config.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers] if loggers not in (None, False, True) else []
        if loggers and isinstance(loggers[0], (WandbLogger, CSVLogger, TensorBoardLogger)):
            kwargs.setdefault("logger", [*loggers, MetricsFile(loggers[0])])  # the run's metrics, safe on disk
        return super().instantiate_trainer(callbacks=every_run, plugins=plugins, **kwargs)

    def before_instantiate_classes(self):
        """CSV and TensorBoard runs get a version folder of their own even when several start at once
        (``claim_version``); a W&B run whose server does not answer logs offline (``wandb_or_offline``)."""
        config = self.config.get(self.subcommand, self.config)
        torch.set_float32_matmul_precision(config.float32_matmul_precision)
        logger = config.get("trainer", {}).get("logger")
        for spec in logger if isinstance(logger, list) else [logger]:
            kind = str(getattr(spec, "class_path", ""))
            if kind.endswith(("CSVLogger", "TensorBoardLogger")):
                claim_version(spec.init_args)
            elif kind.endswith("WandbLogger") and self.subcommand:
                wandb_or_offline()

    def after_fit(self):
        """Where the run is and what to do next: look at it (W&B's terminal viewer ``wandb leet`` reads an offline
        run; TensorBoard a TensorBoard run), upload it, and test its checkpoint with this run's own arguments."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        lines = []
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                run_dir = Path(run.dir).parent
                if run.settings.mode == "offline":
                    lines.append(f"W&B run (offline): {run_dir}\n  look at it: wandb leet {run_dir}\n"
                                 f"  upload it: wandb sync {run_dir}")
                else:
                    lines.append(f"W&B run: {run.url} (local files: {run_dir})")
            elif isinstance(logger, TensorBoardLogger):
                lines.append(f"Logs: {logger.log_dir}\n  look at them: tensorboard --logdir {logger.log_dir}")
            elif getattr(logger, "log_dir", None):
                lines.append(f"Logs: {logger.log_dir}")
        saved = [path for cb in trainer.checkpoint_callbacks for path in (cb.best_model_path, cb.last_model_path)
                 if path and Path(path).is_file()]
        if saved:
            lines.append(f"Checkpoints: {Path(saved[0]).parent}\n  test with: {self.test_command(saved[0])}")
        print("\n".join(lines), flush=True)

    def test_command(self, checkpoint: str) -> str:
        """``dl4 test`` with this run's arguments (its config files and flags) and ``--ckpt_path``."""
        args, skip = [], False
        for arg in self.command_line:
            if skip or arg == "fit":
                skip = False
                continue
            if arg == "--ckpt_path":
                skip = True
                continue
            if not arg.startswith("--ckpt_path="):
                args.append(arg)
        return shlex.join(["dl4", "test", *args, "--ckpt_path", checkpoint])


def configure_runtime() -> None:
    """Process-wide defaults of every dl4 run (the CLI and the benchmarks).

    - W&B logs offline unless asked (WANDB_MODE) or credentials exist (WANDB_API_KEY, ~/.netrc): never blocks.
    - The progress bar redraws every 10 steps (TQDM_MINITERS, which Lightning honours; set it to 1 for every
      step), and the CLI's ``TimedProgressBar`` at most 5 times a second: a redraw per step, captured by W&B's
      console logging, costs as much as a small model's step.
    - Lightning's advertisement and its own deprecated call's notice are not printed (``quiet_third_party``).
    - Denormal floats are flushed to zero: late in training they slow CPU kernels down many times.
    - On a machine without a GPU, CUDA availability is checked the plain way. Lightning sets
      PYTORCH_NVML_BASED_CUDA_CHECK=1 at import (a fork-safe check), and then every optimizer step of a CUDA build of
      torch dlopens the NVML library again to find no GPU (``Optimizer._accelerator_graph_capture_health_check``):
      about 0.15 ms a step. With no GPU there is nothing for a fork to poison, so the variable is dropped.
    """
    os.environ.setdefault("TQDM_MINITERS", "10")
    quiet_third_party()
    torch.set_flush_denormal(True)
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"


class NoAdvertisement(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" line, printed at every run's start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_third_party() -> None:
    """What every run would print that no dl4 user can act on: Lightning's advertisement for its logging service,
    and Lightning 2.6.6's own deprecated ``isinstance(treespec, LeafSpec)`` call under torch 2.14 (a FutureWarning
    at every run's first batch; Lightning's code, not dl4's)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, NoAdvertisement) for f in logger.filters):
        logger.addFilter(NoAdvertisement())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def wandb_or_offline(timeout: float = 10.0) -> None:
    """An online W&B run whose server cannot be reached, or refuses the key, would wait for minutes in
    ``wandb.init`` and then fail: ask the server once (the query W&B's own login makes, with a short timeout), and
    log offline if it does not answer, saying so. Nothing is lost: ``wandb sync`` uploads the run later."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or int(os.environ.get("LOCAL_RANK", 0)):
        return
    import base64
    import json
    import netrc
    import urllib.error
    import urllib.request

    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            entry = netrc.netrc().authenticators(base.split("://", 1)[-1].split("/")[0])
            key = entry[2] if entry else None
        except (OSError, netrc.NetrcParseError):
            key = None
    request = urllib.request.Request(f"{base}/graphql", data=b'{"query": "{ viewer { id } }"}', headers={
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"api:{key or ''}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            viewer = (json.loads(response.read() or b"{}").get("data") or {}).get("viewer")
        reason = None if viewer else "the API key was not accepted"
    except urllib.error.HTTPError as err:
        reason = "the API key was not accepted" if err.code in (401, 403) else f"HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = f"no answer ({getattr(err, 'reason', err)})"
    if reason:
        os.environ["WANDB_MODE"] = "offline"
        print(f"dl4: W&B server {base}: {reason}; logging offline instead (upload later with wandb sync)",
              file=sys.stderr, flush=True)


def resume_run(trainer_config, run: dict, step) -> None:
    """Makes the logger of a resumed ``fit`` continue the checkpoint's run: W&B through its own resume variables
    (``WANDB_RUN_ID``, ``WANDB_RESUME=allow``, as W&B's agent does; online, W&B continues the history after the
    last step; offline, a second ``offline-run-*-<id>`` folder is written, which ``wandb sync`` uploads into the same
    run after the first), CSV and TensorBoard by their version folder. The checkpoint folder follows the logger's
    run id or version, so it is the same folder."""
    logger = trainer_config.get("logger")
    kind = str(getattr(logger, "class_path", ""))
    if not run or not kind.endswith(run.get("logger", "?")):
        return
    if run["logger"] == "WandbLogger":
        os.environ.setdefault("WANDB_RUN_ID", str(run["id"]))
        os.environ.setdefault("WANDB_RESUME", "allow")
    else:
        logger.init_args.version = run["version"]
        args = logger.init_args
        folder = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
        folder = folder / (run["version"] if isinstance(run["version"], str) else f"version_{run['version']}")
        metrics = folder / "metrics.csv"
        if run["logger"] == "CSVLogger" and metrics.is_file():  # CSVLogger deletes an existing metrics.csv
            metrics.rename(folder / f"metrics-until-step-{step}.csv")


def claim_version(init_args) -> None:
    """Gives a CSV or TensorBoard logger without a version the next free ``version_N`` by creating its folder
    atomically (``mkdir`` fails if it exists) and writing it into the logger's config: Lightning picks the next
    number from a listing, so two runs started together would share a folder and one's metrics would delete the
    other's. Only the launching process claims one (DDP's other ranks never write logs)."""
    if init_args.get("version") is not None or int(os.environ.get("LOCAL_RANK", 0)) or \
            int(os.environ.get("NODE_RANK", 0)):
        return
    root = Path(init_args.get("save_dir") or ".") / (init_args.get("name") or "lightning_logs")
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{n}").mkdir()
        except FileExistsError:
            n += 1
            continue
        init_args["version"] = n
        return
