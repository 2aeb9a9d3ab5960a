"""End-to-End Memory Networks (Sukhbaatar et al. 2015) on bAbI, trained as the authors' code trains them.

The net is ``lightning_models.nn.memn2n.EndToEndMemoryNetwork``. Training follows the paper's protocol (sec. 4.2)
as its Matlab code runs it: plain SGD on the cross-entropy summed over a batch of 32, gradient norms clipped at 40
(the Trainer's ``gradient_clip_val``; every weight matrix on its own, as the code does), linear start (LS) for the
first epochs at a constant rate, then the rate halved every 25 epochs; random noise (RN) in the temporal indices
while training. The error is reported per task (in %), with the mean over tasks and the number of failed tasks
(error > 5%).
"""

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric, Metric

from dl4.errors import ConfigError, check_fraction, check_positive
from lightning_models.nn.memn2n import EndToEndMemoryNetwork, random_time_gaps
from dl4.predictions import Predictions
from lightning_models.optim import build_optimizer, trainable
from lightning_models.schedules import HalvingLR
from lightning_models.train_logging import log_train_metrics

FAILED = 5.0  # a task with a test error above 5% counts as failed (Weston et al. 2015)


class PerTaskError(Metric):
    """Wrong answers and questions per bAbI task (1-20), summed across processes; ``compute`` gives errors in %."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("wrong", torch.zeros(21, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(21, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, wrong: torch.Tensor, tasks: torch.Tensor) -> None:
        self.wrong += torch.bincount(tasks, weights=wrong.float(), minlength=21).long()
        self.total += torch.bincount(tasks, minlength=21)

    def compute(self) -> dict[int, torch.Tensor]:
        return {t: 100.0 * self.wrong[t] / self.total[t] for t in range(1, 21) if self.total[t] > 0}


class MemN2N(L.LightningModule):
    """A MemN2N question answerer (see ``EndToEndMemoryNetwork`` for the net's arguments).

    Args:
        vocab_size, sentence_length, memory_size: taken from the datamodule when left out (and then kept in the
            checkpoint's hyperparameters).
        random_noise: the share of empty memories inserted among the real ones in training (RN; 0 turns it off).
        linear_start_epochs: epochs trained without the attention softmaxes (LS; 0 turns it off).
        clip_per_matrix: clip the gradient of every weight matrix to the Trainer's ``gradient_clip_val`` on its own,
            as the authors' code does (False: the norm of all gradients together, Lightning's way).
        time_as_word: see ``EndToEndMemoryNetwork``.
        optimizer: default plain SGD at 0.005 (the authors' code uses 0.01, halved to 0.005 when LS is on).
        lr_scheduler: the schedule after linear start; it is built with ``after_epoch=linear_start_epochs``, so
            it starts when LS ends. Default ``HalvingLR(every=25)``: constant during LS, then halved every 25 epochs.
    """

    def __init__(self, vocab_size: int | None = None, sentence_length: int | None = None,
                 memory_size: int | None = None, embedding_dim: int = 20, hops: int = 3,
                 encoding: Literal["position", "bow"] = "position", temporal: bool = True,
                 tying: Literal["adjacent", "layerwise"] = "adjacent", random_noise: float = 0.1,
                 linear_start_epochs: int = 20, clip_per_matrix: bool = True, time_as_word: bool = True,
                 optimizer: OptimizerCallable | None = None, lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        check_fraction("model", random_noise=random_noise)
        check_positive("model", vocab_size=vocab_size, sentence_length=sentence_length, memory_size=memory_size,
                       embedding_dim=embedding_dim, hops=hops)
        if linear_start_epochs < 0:
            raise ConfigError(f"model.linear_start_epochs must be >= 0, got {linear_start_epochs}")
        self.save_hyperparameters()
        self.optimizer = optimizer or (lambda params: torch.optim.SGD(params, lr=0.005))
        self.lr_scheduler = lr_scheduler or (lambda opt, after_epoch: HalvingLR(opt, 25, after_epoch))
        self.net: EndToEndMemoryNetwork | None = None
        if None not in (vocab_size, sentence_length, memory_size):
            self._build()
        self.register_buffer("softmax", torch.tensor(linear_start_epochs == 0))  # False during linear start
        self.train_error = MeanMetric()
        self.val_error, self.test_error = PerTaskError(), PerTaskError()

    def _build(self):
        hp = self.hparams
        self.net = EndToEndMemoryNetwork(hp.vocab_size, hp.sentence_length, hp.memory_size, hp.embedding_dim,
                                         hp.hops, hp.encoding, hp.temporal, hp.tying, hp.time_as_word)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is None or (stage == "predict" and self.net is not None):  # predict: the checkpoint's shapes
            return
        for key, value in (("vocab_size", dm.vocab_size), ("sentence_length", dm.sentence_length),
                           ("memory_size", dm.memory_slots)):
            if self.hparams[key] is None:
                self.hparams[key] = value
            elif self.hparams[key] != value and not (key == "memory_size" and self.hparams[key] > value):
                raise ConfigError(f"model.{key} is {self.hparams[key]} but the bAbI data has {value}: leave "
                                 f"model.init_args.{key} out (it is taken from the data) or set it to {value}")
        if self.net is None:
            self._build()

    def on_train_epoch_start(self):
        # LS: the softmaxes come back after linear_start_epochs; the flag is a buffer, so a checkpoint keeps it
        self.softmax.fill_(self.current_epoch >= self.hparams.linear_start_epochs)

    def forward(self, batch, time: torch.Tensor | None = None):
        return self.net(batch.stories, batch.queries, batch.n_memories, softmax=bool(self.softmax), time=time)

    def training_step(self, batch, batch_idx):
        time = None
        if self.hparams.random_noise > 0 and self.hparams.temporal:
            time = random_time_gaps(batch.n_memories, batch.stories.shape[1], self.hparams.random_noise)
        logits, _ = self(batch, time)
        loss = F.cross_entropy(logits, batch.answers, reduction="sum")  # summed over the batch, as the code does
        self.train_error.update((logits.argmax(-1) != batch.answers).float())
        log_train_metrics(self, {"train/loss": loss.detach() / len(logits)})
        return loss

    def on_train_epoch_end(self):
        self.log("train/error", 100 * self.train_error.compute())
        self.train_error.reset()

    def _evaluate(self, batch, metric: PerTaskError, stage: str):
        logits, _ = self(batch)
        metric.update(logits.argmax(-1) != batch.answers, batch.tasks)
        self.log(f"{stage}/loss", F.cross_entropy(logits, batch.answers), batch_size=len(logits), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_error, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_error, "test")

    def predict_step(self, batch, batch_idx):
        """``dl4 predict``: each question's answer, its probability, and every hop's attention over the story's
        sentences in memory (oldest first); right or wrong where the file gives the answer."""
        logits, attention = self(batch)
        p, predicted = logits.float().softmax(-1).max(-1)
        dm, records = self.trainer.datamodule, []
        stories = batch.stories.cpu()  # the records are read on the host: one copy each, not one per number
        weights = attention.float().cpu().flip(-1)  # oldest slot first within each memory's real slots, below
        slots = attention.shape[-1]
        for b, (n, answer, guess, prob) in enumerate(zip(batch.n_memories.tolist(), batch.answers.tolist(),
                                                         predicted.tolist(), p.tolist())):
            records.append({
                "story": [dm.sentence(stories[b, slot]) for slot in reversed(range(n))],
                "predicted": dm.vocab[guess], "probability": prob,
                **({"correct": answer == guess} if answer != -1 else {}),  # -2: an answer not in the vocabulary
                "attention": [[round(w, 4) for w in hop] for hop in weights[b, :, slots - n:].tolist()]})
        return Predictions(records, {"attention": attention.float()})

    def _log_errors(self, metric: PerTaskError, stage: str):
        errors = metric.compute()
        metric.reset()
        values = torch.stack(list(errors.values()))
        logs = {f"{stage}/error": values.mean(), f"{stage}/failed_tasks": (values > FAILED).sum().float()}
        if len(errors) > 1 or stage == "test":
            logs.update({f"{stage}/error_task{t}": e for t, e in errors.items()})
        self.log_dict(logs)

    def on_validation_epoch_end(self):
        self._log_errors(self.val_error, "val")

    def on_test_epoch_end(self):
        self._log_errors(self.test_error, "test")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.hparams.clip_per_matrix and gradient_clip_val:
            self.net.clip_grad_norm_per_matrix_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        opt = build_optimizer(self.optimizer, trainable(self))
        return [opt], [self.lr_scheduler(opt, after_epoch=self.hparams.linear_start_epochs)]
