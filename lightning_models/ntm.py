"""Neural Turing Machine (Graves et al. 2014) and its LSTM baseline on the algorithmic tasks.

Both models read a batch of sequences (T, B, input_size) and emit one logit per output bit and step; the cost is
the binary cross-entropy summed over the output phase, in bits per sequence as the paper reports it, and the bit
errors are the output bits wrong after thresholding at 0.5. The nets are in ``lightning_models.nn.ntm``.
"""

import bisect
import math
import time
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import Metric

from dl4.errors import ConfigError, check_positive
from dl4.internals import backend_compiler_failed
from lightning_models.nn.ntm import MemoryInit, NeuralTuringMachine, StackedLSTM
from dl4.predictions import Predictions
from lightning_models.optim import optimizer_with_schedule, trainable
from lightning_models.train_logging import log_train_metrics

LN2 = math.log(2)


def sequence_cost(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The output phase's binary cross-entropy (in nats) and wrong bits, each summed per sequence: (B,), (B,).
    ``logits`` span the whole sequence; the targets are its last T_out steps, or, with a ``mask`` (T, B) from a
    batch of mixed lengths, span it too and count where the mask is set."""
    logits = logits[-targets.shape[0]:]
    nats = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    errors = ((logits > 0).float() != targets).float()
    if mask is not None:
        nats, errors = nats * mask.unsqueeze(-1), errors * mask.unsqueeze(-1)
    return nats.sum((0, 2)), errors.sum((0, 2))


class PerLengthCost(Metric):
    """The cost (nats) and wrong bits of every sequence, summed by sequence length and across processes."""

    full_state_update = False

    def __init__(self, lengths, **kwargs):
        super().__init__(**kwargs)
        self.lengths = sorted(set(lengths))
        size = self.lengths[-1] + 1
        self.add_state("nats", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("errors", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nats: torch.Tensor, errors: torch.Tensor, length: int) -> None:
        self.nats[length] += nats.sum()
        self.errors[length] += errors.sum()
        self.count[length] += len(nats)

    def compute(self) -> dict[str, torch.Tensor]:
        """bits_per_seq and bit_errors_per_seq over all sequences, and ``..._len<L>`` for every length seen."""
        seen = self.count > 0
        out = {"bits_per_seq": self.nats[seen].sum() / self.count[seen].sum() / LN2,
               "bit_errors_per_seq": self.errors[seen].sum() / self.count[seen].sum()}
        for length in self.lengths:
            if seen[length]:
                out[f"bits_per_seq_len{length}"] = self.nats[length] / self.count[length] / LN2
                out[f"bit_errors_per_seq_len{length}"] = self.errors[length] / self.count[length]
        return {key: value.float() for key, value in out.items()}


class SequenceLearner(L.LightningModule):
    """The training logic shared by the NTM and the LSTM: the cost, the metrics, convergence and gradient clipping.

    Args:
        input_size, output_size: the task's channels (the datamodule's ``input_size``/``output_size``).
        converged_bits: the validation cost (bits per sequence) below which the model counts as converged; the
            number of training sequences seen until then is logged as ``val/sequences_to_converge``.
        clip_percentile: AutoClip (Seetharaman et al. 2020): clip every gradient's norm to this percentile of the
            norms seen so far (and never above the Trainer's ``gradient_clip_val``). The NTM's gradients are
            mostly small but now and then 10^4-10^6 times the median, through the read head's shift and
            sharpening chained over time; a fixed clip at 10 lets such a step through as a full-size step in
            one odd direction, and the cost jumped back up after converging. ``None`` clips at the Trainer's value.
        optimizer, lr_scheduler: default Adam at 1e-3, no schedule. The paper's RMSprop is ``torch.optim.RMSprop``
            with ``momentum: 0.9, alpha: 0.95``; a decay from some epoch on is
            ``lightning_models.schedules.ExponentialLRFrom``.
    """

    def __init__(self, input_size: int = 9, output_size: int = 8, converged_bits: float = 0.1,
                 clip_percentile: float | None = None, optimizer: OptimizerCallable | None = None,
                 lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.lr_scheduler = lr_scheduler
        check_positive("model", input_size=input_size, output_size=output_size, converged_bits=converged_bits)
        if clip_percentile is not None and not 0 < clip_percentile <= 100:
            raise ConfigError(f"model.clip_percentile must be in (0, 100], got {clip_percentile}")
        self.register_buffer("sequences_seen", torch.zeros((), dtype=torch.long))
        self.converged_at: int | None = None
        self.grad_norms: list[float] = []  # every step's gradient norm, sorted, for clip_percentile

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        for key in ("input_size", "output_size"):
            expected = getattr(dm, key, None)
            if expected is not None and expected != self.hparams[key]:
                raise ConfigError(f"model.{key} is {self.hparams[key]} but the data ({dm.task}) has {expected}: "
                                 f"set model.init_args.{key}: {expected}")
        # validation and test costs by length: the fixed sets hold one batch per length (a training length for
        # validation, a generalisation length for test)
        if not hasattr(dm, "val_lengths"):
            raise TypeError(f"{type(self).__name__} trains on an AlgorithmicTasksDataModule (data.class_path: "
                            f"AlgorithmicTasksDataModule), whose fixed sets give every batch its length; got "
                            f"{type(dm).__name__}")
        self.val_cost = PerLengthCost(dm.val_lengths)
        self.test_cost = PerLengthCost(dm.test_lengths)

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def training_step(self, batch, batch_idx):
        inputs, targets, *mask = batch  # a mask comes with batches of mixed lengths (data.mixed_lengths)
        nats, errors = sequence_cost(self(inputs), targets, *mask)
        loss = nats.mean()
        self.sequences_seen += len(nats) * self.trainer.world_size
        log_train_metrics(self, {"train/bits_per_seq": loss.detach() / LN2, "train/bit_errors": errors.mean(),
                                 "train/sequences": self.sequences_seen.float()})
        return loss

    def _evaluate(self, batch, stage: str):
        inputs, targets, length = batch  # the fixed sets hold one batch per length (see the datamodule)
        nats, errors = sequence_cost(self(inputs), targets)
        getattr(self, f"{stage}_cost").update(nats, errors, int(length))

    def _log_costs(self, stage: str) -> torch.Tensor:
        """Logs ``<stage>/bits_per_seq``, ``<stage>/bit_errors_per_seq`` and both per length; returns the cost."""
        metric = getattr(self, f"{stage}_cost")
        costs = metric.compute()  # already summed across processes: every rank logs the same values (sync_dist
        # averages equal values; it is there so that Lightning does not warn about epoch-level logs under DDP)
        metric.reset()
        self.log_dict({f"{stage}/{key}": value for key, value in costs.items()}, sync_dist=True)
        return costs["bits_per_seq"]

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self):
        cost = self._log_costs("val")
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        seen = int(self.sequences_seen)
        self.log("val/sequences", float(seen))
        self.log("val/train_seconds", time.perf_counter() - self._fit_start)  # wall time since fit began
        if self.converged_at is None and cost < self.hparams.converged_bits:
            self.converged_at = seen
        if self.converged_at is not None:
            self.log("val/sequences_to_converge", float(self.converged_at))

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def on_test_epoch_end(self):
        self._log_costs("test")

    def predict_step(self, batch, batch_idx):
        """``dl4 predict``, one sequence a batch: the output sequence (bits, and the probabilities), its wrong bits
        and cost against the target, and for the NTM the memory trace (raw arrays and Figure 6's picture)."""
        from callbacks.pictures import trace_figure  # (drawing helpers; imported here, the callbacks import models)

        inputs, targets = batch
        logits, trace = self(inputs, record=True) if hasattr(self, "ntm") else (self(inputs), None)
        nats, errors = sequence_cost(logits, targets)
        probabilities = torch.sigmoid(logits[-targets.shape[0]:, 0]).float().cpu()
        bits = ["".join(str(int(b)) for b in row) for row in (probabilities > 0.5).int().tolist()]
        record = {"length": inputs.shape[0], "bit_errors": int(errors.item()), "bits_per_seq": nats.item() / LN2,
                  "output": bits}
        arrays = {"inputs": inputs[:, 0].cpu(), "targets": targets[:, 0].cpu(), "outputs": probabilities}
        if trace is not None:
            trace = {key: value[0].float().cpu() for key, value in trace.items()}  # (T, ...) of the one sequence
            arrays.update(trace)
        picture = trace_figure(inputs[:, 0].float().cpu(), targets[:, 0].float().cpu(),
                               torch.sigmoid(logits[:, 0]).float().cpu(),
                               trace)
        return Predictions([record], {k: [v] for k, v in arrays.items()}, {"trace": [picture]})

    def configure_optimizers(self):
        return optimizer_with_schedule(trainable(self), self.optimizer, self.lr_scheduler)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        percentile = self.hparams.clip_percentile
        if percentile is None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        bisect.insort(self.grad_norms, float(norm))  # kept sorted: the percentile is a lookup, not a sort a step
        position = (len(self.grad_norms) - 1) * percentile / 100  # linear interpolation, as numpy's percentile
        low = int(position)
        high = min(low + 1, len(self.grad_norms) - 1)
        threshold = self.grad_norms[low] + (self.grad_norms[high] - self.grad_norms[low]) * (position - low)
        if gradient_clip_val:
            threshold = min(threshold, gradient_clip_val)
        torch.nn.utils.clip_grads_with_norm_(params, threshold, norm)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["converged_at"] = self.converged_at
        checkpoint["grad_norms"] = self.grad_norms

    def on_load_checkpoint(self, checkpoint):
        self.converged_at = checkpoint.get("converged_at")
        self.grad_norms = sorted(checkpoint.get("grad_norms", []))  # sorted, whatever wrote the checkpoint


class NTM(SequenceLearner):
    """A Neural Turing Machine (see ``NeuralTuringMachine`` for the arguments); the paper's copy setting is the
    default: an LSTM controller of 100 units, a 128 x 20 memory, one read and one write head, shifts -1..1.
    ``compile``: train with the time step compiled (``NeuralTuringMachine.compile_step``). The training arguments
    (``converged_bits``, ``clip_percentile``, ``optimizer``, ``lr_scheduler``) are ``SequenceLearner``'s."""

    def __init__(self, input_size: int = 9, output_size: int = 8, controller: Literal["lstm", "feedforward"] = "lstm",
                 controller_size: int = 100, memory_rows: int = 128, memory_width: int = 20, read_heads: int = 1,
                 write_heads: int = 1, shift_range: int = 1, memory_init: MemoryInit = "constant",
                 clip: float = 20.0, compile: bool = False, **kwargs):
        super().__init__(input_size, output_size, **kwargs)
        self.save_hyperparameters()
        self.ntm = NeuralTuringMachine(input_size, output_size, controller, controller_size, memory_rows,
                                       memory_width, read_heads, write_heads, shift_range, memory_init, clip)
        if compile:
            self.ntm.compile_step()

    def training_step(self, batch, batch_idx):
        try:
            return super().training_step(batch, batch_idx)
        except backend_compiler_failed() as err:
            raise RuntimeError(f"torch.compile could not build the NTM's step on this machine ({type(err).__name__}"
                               f": {str(err).splitlines()[0][:300]}). Install a C++ compiler (g++), or train "
                               f"eagerly with model.init_args.compile: false") from None

    def forward(self, inputs: torch.Tensor, record: bool = False):
        return self.ntm(inputs, record)


class LSTMBaseline(SequenceLearner):
    """The paper's LSTM baseline: ``num_layers`` stacked LSTM layers of ``hidden_size`` units (3 x 256 for copy);
    the training arguments are ``SequenceLearner``'s."""

    def __init__(self, input_size: int = 9, output_size: int = 8, hidden_size: int = 256, num_layers: int = 3,
                 **kwargs):
        super().__init__(input_size, output_size, **kwargs)
        self.save_hyperparameters()
        self.lstm = StackedLSTM(input_size, output_size, hidden_size, num_layers)

    def forward(self, inputs: torch.Tensor):
        return self.lstm(inputs)
