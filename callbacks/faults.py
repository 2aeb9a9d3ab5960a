"""What every dl4 run has, added by the ``dl4`` console script: it stops on divergence, saves on pre-emption and
resumes exactly.

- ``DivergenceGuard``: a non-finite training loss or parameter stops the run with ``DivergedError`` (the step, the
  epoch, the last good checkpoint); ``SafeCheckpointIO`` refuses to write non-finite weights, so no checkpoint lies.
- ``PreemptionCheckpoint``: on SIGTERM (what a cluster sends before it pre-empts a job) the current step is saved
  as ``last.ckpt`` and the run stops; ``dl4`` then exits with status 143.
- ``RunState``: the global random number generators and the logger's run id go into every checkpoint, so a resumed
  run continues the same random streams, the same W&B run and the same checkpoint folder.

And one a run asks for (in its config, or ``--trainer.callbacks+=TimeBudget --trainer.callbacks.seconds=N``):

- ``TimeBudget``: a job with a wall-clock limit stops at the end of the last epoch that fits in it, with
  ``last.ckpt`` written, so the next job resumes from it exactly.
"""

import contextlib
import errno
import fcntl
import json
import os
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dl4.errors import ConfigError
from dl4.internals import drop_loader_position, hpc_checkpoint_path, logger_writes_this_step


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or parameter; the message names the step, the epoch and the last good
    checkpoint. ``dl4`` prints it as one line and exits with status 3."""


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where this run's checkpoints go: the folder of the ModelCheckpoint that keeps ``last.ckpt``, else the first
    one's, else Lightning's default."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    keeps_last = [cb for cb in callbacks if cb.save_last]
    if keeps_last or callbacks:
        return Path((keeps_last or callbacks)[0].dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


def last_good_checkpoint(trainer: L.Trainer) -> str:
    """The most recent checkpoint this run wrote (all are finite: ``SafeCheckpointIO`` refuses the others)."""
    paths = {p for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
             for p in (cb.last_model_path, cb.best_model_path) if p and Path(p).is_file()}
    if not paths:
        return "none (this run wrote none)"
    newest = max(paths, key=lambda p: Path(p).stat().st_mtime)
    step = torch.load(newest, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    return f"{newest} (step {step})"


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding NaN or inf (one host sync for all of them)."""
    names = [k for k, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(tensors[k]).all() for k in names]).cpu()
    return [k for k, ok in zip(names, finite) if not ok]


class DiskFullError(OSError):
    """A file could not be written for lack of space. The message names the file, its folder's free space and the
    newest checkpoint left intact; ``dl4`` prints it as one line and exits with status 1."""


def disk_full(path: str | Path | None) -> DiskFullError:
    """The one-line error for a file that did not fit on its disk: the path, the space left, what was kept."""
    path = Path(path) if path else None
    folder = path.parent if path else None
    while folder is not None and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = f", {shutil.disk_usage(folder).free // 1024} KiB free" if folder is not None else ""
    kept = sorted((p for p in folder.glob("*.ckpt")), key=lambda p: p.stat().st_mtime) if folder else []
    newest = f"; the newest checkpoint there, {kept[-1]}, is intact" if kept else ""
    error = DiskFullError(f"no space left on the disk of {path or 'a file being written'}{free}{newest}: free "
                          "space, or point the run at another disk (--trainer.default_root_dir, the logger's "
                          "save_dir, DL4_DATA_DIR, TMPDIR), then resume with --ckpt_path last")
    error.errno = errno.ENOSPC
    return error


def disk_was_full(err: BaseException | None) -> bool:
    """Whether ``err`` or an error behind it is ENOSPC (torch.save reports a full disk as its own RuntimeError,
    with the OSError in its context)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe: a checkpoint whose weights are not finite is refused
    (``DivergedError``); a checkpoint is written to a temporary file beside it, flushed to disk, and renamed, so a
    process killed mid-write leaves the previous ``last.ckpt`` whole (Lightning writes in place), and a full disk
    leaves no half-written file and says so in one line (``DiskFullError``). The temporary file is beside its target,
    on the same file system: Lightning's own atomic save stages it in ``$TMPDIR``, which on many cluster nodes is
    small, and then no checkpoint is written at all."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        bad = non_finite(checkpoint.get("state_dict", {}))
        if bad:
            raise DivergedError(f"not writing {path}: the weights are not finite ({', '.join(bad[:3])}"
                                f"{', ...' if len(bad) > 3 else ''}) at step {checkpoint.get('global_step')}, "
                                f"epoch {checkpoint.get('epoch')}")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            if disk_was_full(err):
                raise disk_full(path) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)


class DivergenceGuard(L.Callback):
    """Stops training when it diverges: a non-finite loss or parameter, or an explosion that stays finite, a training
    loss more than ``loss_growth`` times its first value or a weight more than ``weight_growth`` times the largest at
    the start (both counted from at least 1, so that a loss or weights that start near 0 are measured against 1).

    Cheaply: each step only keeps its loss (a detached device tensor, no host sync, no arithmetic); the kept losses
    are judged together, with one host sync, on the steps the logger writes anyway (every ``log_every_n_steps``),
    before each validation, at each epoch's end and before every checkpoint is written, and the parameters are
    checked then too (a GAN's manual steps return no loss), once per optimizer step: the epoch's end and the
    checkpoints written after it see the same weights. The first bad step is named exactly, as when each step
    judged its own loss (which cost ten small tensor operations a step, 0.1-0.2 ms on a CPU). A checkpoint of a
    diverged model is never written. dl4 adds one to every run; to change the thresholds give your
    own (``--trainer.callbacks+=DivergenceGuard --trainer.callbacks.loss_growth=1e8``). The defaults leave a margin
    of orders of magnitude over every config's normal first epochs (``benchmarks/divergence.py``,
    docs/results/faults.md), and catch the ST-CNN at learning rate 1e6, whose loss reaches ~1e30 with finite weights.
    """

    def __init__(self, loss_growth: float = 1e6, weight_growth: float = 1e4):
        if not (loss_growth > 1 and weight_growth > 1):
            raise ConfigError(f"DivergenceGuard: loss_growth and weight_growth must be > 1, got {loss_growth} and "
                              f"{weight_growth}")
        self.loss_growth, self.weight_growth = loss_growth, weight_growth
        self._losses, self._steps = [], []  # the losses since the last check, and their steps
        self._first_bad = self._exploded = self._loss_ref = self._weight_ref = self._checked_step = None

    def on_train_start(self, trainer, pl_module):
        self._losses, self._steps = [], []
        self._first_bad = self._exploded = self._loss_ref = self._checked_step = None
        self._weight_ref = max(largest_weight(pl_module), 1.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if torch.is_tensor(loss):
            self._losses.append(loss.detach())
            self._steps.append(trainer.global_step)
        if logger_writes_this_step(trainer):  # the logger syncs on these steps anyway
            self.check(trainer, pl_module)

    def judge_losses(self) -> None:
        """The kept losses, judged at once: the first non-finite one and the first that grew more than
        ``loss_growth`` times the run's first loss (its absolute value; the largest entry of a loss that is not a
        scalar), remembered by step."""
        if not self._losses:
            return
        losses = torch.stack([loss if loss.dim() == 0 else loss.abs().max() for loss in self._losses])
        losses = losses.abs().float().cpu()  # the one host sync
        steps, self._losses, self._steps = self._steps, [], []
        if self._loss_ref is None:
            self._loss_ref = float(losses[0].clamp(min=1.0)) if torch.isfinite(losses[0]) else 1.0
        bad = ~torch.isfinite(losses)
        grown = (losses > self.loss_growth * self._loss_ref) & ~bad
        if self._first_bad is None and bad.any():
            self._first_bad = steps[int(bad.nonzero()[0])]
        if self._exploded is None and grown.any():
            self._exploded = steps[int(grown.nonzero()[0])]

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.check(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        for logger in trainer.loggers:
            if isinstance(logger, MetricsFile) and trainer.state.fn == "fit":
                logger.mark(trainer.global_step)
        if trainer.state.fn == "fit" and self._weight_ref is not None:
            self.check(trainer, pl_module)

    def check(self, trainer, pl_module):
        if trainer.global_step == self._checked_step and not self._losses:
            return  # these weights passed at this step already (parameters change only at an optimizer step)
        self.judge_losses()
        where = f"epoch {trainer.current_epoch}"
        if (step := self._first_bad) is not None:
            what = f"the training loss was not finite at step {step}"
        elif (step := self._exploded) is not None:
            what = (f"the training loss grew more than {self.loss_growth:g} times its first value "
                    f"({self._loss_ref:.3g}) by step {step}")
        elif bad := non_finite(dict(pl_module.named_parameters())):
            what = f"parameters are not finite ({', '.join(bad[:3])}) by step {trainer.global_step}"
        elif (largest := largest_weight(pl_module)) > self.weight_growth * self._weight_ref:
            what = (f"a weight reached {largest:.3g}, more than {self.weight_growth:g} times the largest at the "
                    f"start ({self._weight_ref:.3g}), by step {trainer.global_step}")
        else:
            self._checked_step = trainer.global_step
            return
        raise DivergedError(f"training diverged: {what}, {where}; no checkpoint of it was written; last good "
                            f"checkpoint: {last_good_checkpoint(trainer)}. Lower the learning rate, or resume from "
                            "that checkpoint with another setting (the thresholds: DivergenceGuard's loss_growth and "
                            "weight_growth)")


def largest_weight(module: torch.nn.Module) -> float:
    """max |w| over the module's floating-point parameters (one host sync)."""
    tops = [p.detach().abs().max() for p in module.parameters() if p.is_floating_point() and p.numel()]
    return float(torch.stack(tops).max()) if tops else 0.0


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM, saves the current step as ``last.ckpt`` in the run's checkpoint folder and stops (resume with
    ``--ckpt_path last``). ``dl4`` prints what was saved and exits with status 143 (128 + SIGTERM, what a shell
    reports for a process ended by SIGTERM), which a requeue policy (Kubernetes' ``podFailurePolicy``, a SLURM
    script's ``$?``) tells apart from success (0) and from a bug (1); W&B marks the run preempted.

    Lightning notes the signal (``trainer.received_sigterm``) but finishes the epoch before it stops, with exit
    status 0 and no checkpoint; a cluster's grace period is seconds. So the run stops after the current step. Under
    DDP Lightning's own check at the next step's start stops every rank together (a rank stopping alone would
    leave the others in a collective); either way the checkpoint is written from ``on_exception``, on all ranks.

    In a SLURM job (Lightning's ``SLURMEnvironment``) the checkpoint is Lightning's next ``hpc_ckpt_N.ckpt`` in the
    trainer's ``default_root_dir`` instead: the requeued job (``#SBATCH --requeue``, pre-emption) resumes from the
    newest of them by itself, as it does after Lightning's own requeue signal (``--signal=SIGUSR1@120``).
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.received_sigterm and trainer.world_size == 1:
            raise SIGTERMException

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        slurm = SLURMEnvironment.detect()  # the test by which Lightning runs a job as a SLURM job
        if slurm:  # what the requeued job resumes from by itself, as after Lightning's own requeue signal
            path = Path(hpc_checkpoint_path(trainer))
        else:
            path = checkpoint_dir(trainer) / "last.ckpt"
            for cb in trainer.checkpoint_callbacks:  # the file is theirs: a resumed run overwrites it, not last-v1
                if isinstance(cb, ModelCheckpoint) and cb.save_last and Path(cb.dirpath) == path.parent:
                    cb.last_model_path = str(path)
        trainer.save_checkpoint(path)
        import wandb

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and wandb.run is not None and trainer.is_global_zero:
                wandb.run.mark_preempting()  # (only a run that was started: logger.experiment would start one)
        # Lightning re-raises this SystemExit after the other hooks and the loggers' finalize; dl4 prints its code
        resume = ("the requeued SLURM job resumes from it" if slurm else
                  f"Resume with the same command and --ckpt_path last (or --ckpt_path {path})")
        exception.code = (f"stopped by SIGTERM at step {trainer.global_step}, epoch {trainer.current_epoch}; saved "
                          f"{path}. {resume}")


class TimeBudget(ModelCheckpoint):
    """Stops training at the end of an epoch when the next epoch would not fit in ``seconds`` of this process's
    wall time, and writes ``last.ckpt`` then, every ``every_n_epochs`` epochs and at the last epoch; a second job
    with ``--ckpt_path last`` (and the same budget) continues where this one stopped.

    The time counts from the callback's construction (so setting up, loading data and the sanity check count), and
    the next epoch is taken to last as long as the longest epoch of this process so far, its checkpoint included.
    Nothing of the budget goes into the checkpoint, so each job has its full budget. Lightning's ``Timer``
    (``max_time``) is the other way round: it restores the time already spent from the checkpoint, so a resumed job
    given the same limit stops at once, and it stops mid-epoch. Under DDP the ranks stop together (any rank's
    clock decides). Use it in place of a ``ModelCheckpoint`` that keeps ``last.ckpt`` in the same folder.
    """

    def __init__(self, seconds: float, every_n_epochs: int = 1, dirpath: str | None = None):
        if not seconds > 0 or every_n_epochs < 1:
            raise ConfigError(f"TimeBudget: seconds must be positive and every_n_epochs at least 1, got {seconds} "
                              f"and {every_n_epochs}")
        # save_top_k=0: only last.ckpt; no version counter: a resumed job overwrites it rather than writing last-v1
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_epochs=every_n_epochs,
                         enable_version_counter=False)
        self.seconds = seconds
        self.saved_step: int | None = None
        self._start = time.monotonic()
        self._mark: float | None = None
        self._longest_epoch = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        if self._mark is None:
            self._mark = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module):
        now = time.monotonic()
        self._longest_epoch = max(self._longest_epoch, now - self._mark)
        self._mark = now
        out_of_time = trainer.strategy.reduce_boolean_decision(now - self._start + self._longest_epoch > self.seconds,
                                                               all=False)
        epoch = trainer.current_epoch + 1
        if out_of_time and epoch != trainer.max_epochs:
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"TimeBudget: stopping after epoch {epoch}: {now - self._start:.0f} s of {self.seconds:.0f} s "
                      f"spent, and an epoch takes up to {self._longest_epoch:.0f} s. Resume with the same command "
                      "and --ckpt_path last", flush=True)
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.should_stop or epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs:
            self.write_last(trainer)

    def on_train_end(self, trainer, pl_module):
        if self.saved_step != trainer.global_step and not trainer.fast_dev_run:  # stopped mid-epoch (max_steps)
            self.write_last(trainer)

    def write_last(self, trainer):
        self.last_model_path = str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        trainer.save_checkpoint(self.last_model_path)  # on every rank: rank zero writes it
        self.saved_step = trainer.global_step

    def on_validation_end(self, trainer, pl_module):
        pass  # saves at the training epoch's end only, after the module's own epoch-end step (its schedulers)


def collect_rng_states() -> dict:
    """The global generators' states as tensors and plain numbers, so that a checkpoint holding them still loads
    with ``torch.load(weights_only=True)`` (Lightning's ``_collect_rng_states`` keeps numpy's as an ndarray)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def run_identity(trainer: L.Trainer) -> dict:
    """What a resumed run needs to log into the same run and checkpoint folder."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return {"logger": "WandbLogger", "id": logger.version}
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            return {"logger": type(logger).__name__, "version": logger.version}
    return {}


class MetricsFile(Logger):
    """Every metric row the run's logger is sent, also written beside the run as one JSON line each
    (``metrics.jsonl``: ``<save_dir>/<project>/<run id>/`` for W&B, the logger's ``log_dir`` for CSV and TensorBoard),
    flushed as written and synced to disk with every checkpoint, which it marks. dl4 adds one to every run that has
    a logger.

    W&B's offline log is written by its own process, which buffers: killed without warning (the OOM killer, a lost
    node), a run's ``.wandb`` file kept none of the 15 history rows logged before its last checkpoint
    (``tests/test_faults.py::test_metrics_logged_before_a_sigkill_survive_and_reach_wandb_on_resume``). This file
    keeps them all: a resumed run (``--ckpt_path``) drops the rows after the checkpoint it resumes from, and logs
    to W&B the rows that W&B's earlier segments of the run lack, so that ``wandb sync`` uploads one continuous
    curve (by ``trainer/global_step``). A disk that fills up stops the run here, with one line, rather than
    leaving a silent gap in W&B's log. Pictures are not its business (``media = False``: ``callbacks/media.py``).
    """

    media = False

    def __init__(self, run_logger):
        super().__init__()
        self.run_logger = run_logger
        self.path: Path | None = None
        self.file = None
        self.marked = None  # the step of the last checkpoint marked, while no row has been written after it

    @property
    def name(self) -> str:
        return "metrics.jsonl"

    @property
    def version(self):
        return self.run_logger.version

    def folder(self) -> Path:
        logger = self.run_logger
        if isinstance(logger, WandbLogger):
            return Path(logger.save_dir or ".") / (logger.name or "wandb") / str(logger.version)
        return Path(logger.log_dir)

    def open(self):
        if self.file is None:
            self.path = self.folder() / "metrics.jsonl"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a")
        return self.file

    def write(self, row: dict) -> None:
        try:
            f = self.open()
            f.write(json.dumps(row) + "\n")
            f.flush()
        except OSError as err:
            if err.errno == errno.ENOSPC:  # W&B's log, beside it on the same disk, has stopped being written too
                raise disk_full(self.path) from None
            raise

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self.write({"step": step, **{k: float(v) for k, v in metrics.items()}})
        self.marked = None

    @rank_zero_only
    def mark(self, global_step: int) -> None:
        """Marks that a checkpoint of ``global_step`` is being written (``DivergenceGuard.on_save_checkpoint``), and
        syncs the file: once for several checkpoints of one step with no row written between them."""
        if global_step == self.marked:
            return
        self.write({"checkpoint_global_step": global_step})
        os.fsync(self.file.fileno())
        self.marked = global_step

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # every row was flushed; on a full disk the close cannot add any
                self.file.close()
            self.file = None

    @rank_zero_only
    def resume(self, trainer: L.Trainer) -> None:
        """On a resumed fit: keep the rows up to the checkpoint resumed from, and give W&B those it lacks."""
        path = self.folder() / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        marks = [i for i, line in enumerate(lines) if json.loads(line).get("checkpoint_global_step") == trainer.global_step]
        if not marks:
            return
        kept = lines[:marks[-1] + 1]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        if isinstance(self.run_logger, WandbLogger):
            relog_into_wandb(self.run_logger, [json.loads(line) for line in kept])


def relog_into_wandb(logger: WandbLogger, rows: list[dict]) -> None:
    """Logs the metric rows whose step W&B's earlier offline segments of this run do not hold (its log lost them
    when the process was killed), in order, before the resumed run logs its own."""
    from dl4.wandb_records import history

    held = set()
    for segment in Path(logger.save_dir or ".", "wandb").glob(f"offline-run-*-{logger.version}"):
        if any(segment.glob("run-*.wandb")) and Path(logger.experiment.dir).parent != segment:
            held |= {row.get("trainer/global_step") for row in history(segment)}
    for row in rows:
        if row.get("step") is not None and row["step"] not in held:
            logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])


class RunState(L.Callback):
    """Puts the global random generators' states and the run's identity (logger and W&B run id) into every
    checkpoint, restores the generators when training resumes, and holds a lock on the checkpoint folder so that
    two runs never write into one.

    Lightning restores the model, optimisers, loops and stateful data loaders, but not the global generators that
    dropout, noise, dynamic binarisation and sampler seeds draw from: without this a resumed run continues on other
    random numbers. They are set back at ``on_train_start``, after everything that runs before training (set-up,
    the sanity check, which Lightning isolates from the generators anyway), so the next draw is the one the
    interrupted run would have made.
    """

    def __init__(self):
        self._restored = None
        self._lock = None
        self.trainer: L.Trainer | None = None

    def state_dict(self):
        return {"rng": collect_rng_states(), "run": run_identity(self.trainer) if self.trainer else {}}

    def load_state_dict(self, state_dict):
        self._restored = state_dict.get("rng")

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # At an epoch's end the next epoch starts a fresh iterator, so the loader's position must not be restored
        # (with limit_train_batches the finished epoch's iterator was left part-way, and restoring it would
        # continue that order); datamodules/tensors.py makes the fresh order a function of the epoch.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            drop_loader_position(checkpoint)

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero and trainer.checkpoint_callbacks:  # no checkpoints (benchmarks): nothing to guard
            self._lock_folder(checkpoint_dir(trainer))
        if self._restored is not None:
            set_rng_states(self._restored)
            self._restored = None
        if trainer.ckpt_path:
            for logger in trainer.loggers:
                if isinstance(logger, MetricsFile):
                    logger.resume(trainer)

    def _lock_folder(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".dl4.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "?"
            lock.close()
            raise ConfigError(f"another dl4 run (pid {owner}) is writing checkpoints to {folder}: give this run "
                              "its own folder (--trainer.default_root_dir=..., or a logger, which versions runs)"
                              ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def teardown(self, trainer, pl_module, stage):
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None
