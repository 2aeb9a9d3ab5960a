"""The NTM paper's synthetic algorithmic tasks (Graves et al. 2014, section 4), generated on the fly.

Every batch is time-major: ``inputs`` (T, B, input_size) and ``targets`` (T_out, B, output_size), the targets
being what the model must emit over the last T_out steps (the output phase, when the input is all zeros except
for markers). One batch holds sequences of one length, so the whole batch steps through time together.

- copy: L random 8-bit vectors, then a delimiter on its own channel; the target is the L vectors again.
- repeat copy: L vectors, a delimiter, then the number of repeats n on its own channel, normalised to mean zero and
  variance one over the training repeats (as the paper does); the target is the vectors n times, then an end
  marker on an extra output channel.
- associative recall: L items of three 6-bit vectors, each item opened by a delimiter on channel 6; then a
  query item (one of the first L-1) opened by a delimiter on channel 7; the target is the item that followed it.
"""

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.tensors import EpochOrder, eval_sampler
from datamodules.user_inputs import read_bit_sequences
from dl4.errors import ConfigError, InputError, check_positive

Task = Literal["copy", "repeat_copy", "associative_recall"]


def random_bits(shape, generator: torch.Generator, zero_vector_rate: float = 0.0) -> torch.Tensor:
    """Independent fair bits; with ``zero_vector_rate`` each vector (the last axis) is instead all zeros with that
    probability, on top of the 1 in 2^width of fair bits."""
    bits = torch.randint(0, 2, shape, generator=generator).float()
    if zero_vector_rate:
        bits *= torch.rand((*shape[:-1], 1), generator=generator) >= zero_vector_rate
    return bits


def copy_batch(batch_size: int, length: int, width: int, generator: torch.Generator, zero_vector_rate: float = 0.0):
    """inputs (2L+1, B, width+1): L vectors, the delimiter (channel ``width``), L blank steps; targets (L, B, width)."""
    return copy_sequences(random_bits((length, batch_size, width), generator, zero_vector_rate))


def copy_sequences(seq: torch.Tensor):
    """Given vectors seq (L, B, width): the copy task's inputs (2L+1, B, width+1) and targets (seq itself)."""
    length, batch_size, width = seq.shape
    inputs = torch.zeros(2 * length + 1, batch_size, width + 1)
    inputs[:length, :, :width] = seq
    inputs[length, :, width] = 1.0
    return inputs, seq


def normalised_repeats(repeats: int, min_repeats: int, max_repeats: int) -> float:
    """The paper's repeat count input: n standardised by the mean and standard deviation of the uniform
    distribution over min_repeats..max_repeats (1..10 gives -1.57..1.57, steps of 0.35)."""
    mean = (min_repeats + max_repeats) / 2
    std = math.sqrt(((max_repeats - min_repeats + 1) ** 2 - 1) / 12) or 1.0
    return (repeats - mean) / std


def repeat_copy_batch(batch_size: int, length: int, repeats: int, width: int, min_repeats: int, max_repeats: int,
                      generator: torch.Generator, zero_vector_rate: float = 0.0):
    """inputs (L+2 + nL+1, B, width+2): L vectors, the delimiter (channel ``width``), the normalised n (channel
    ``width+1``), then blanks; targets (nL+1, B, width+1): the vectors n times, then the end marker.

    The delimiter marks the end of the input on its own: the count alone would not, since a count near the middle
    of the range is close to 0 (5 and 6 repeats of 1-10 are -0.17 and 0.17) and looks like a blank step."""
    seq = random_bits((length, batch_size, width), generator, zero_vector_rate)
    return repeat_copy_sequences(seq, repeats, min_repeats, max_repeats)


def repeat_copy_sequences(seq: torch.Tensor, repeats: int, min_repeats: int, max_repeats: int):
    """Given vectors seq (L, B, width) and n: repeat copy's inputs and targets (see ``repeat_copy_batch``)."""
    length, batch_size, width = seq.shape
    out_steps = repeats * length + 1
    inputs = torch.zeros(length + 2 + out_steps, batch_size, width + 2)
    inputs[:length, :, :width] = seq
    inputs[length, :, width] = 1.0
    inputs[length + 1, :, width + 1] = normalised_repeats(repeats, min_repeats, max_repeats)
    targets = torch.zeros(out_steps, batch_size, width + 1)
    targets[:-1, :, :width] = seq.repeat(repeats, 1, 1)
    targets[-1, :, width] = 1.0
    return inputs, targets


def associative_recall_batch(batch_size: int, items: int, width: int, item_length: int, generator: torch.Generator,
                             zero_vector_rate: float = 0.0):
    """inputs ((L+1)(item_length+1) + item_length, B, width+2); targets (item_length, B, width)."""
    if items < 2:
        raise ConfigError(f"associative recall needs at least 2 items, got {items}")
    content = random_bits((items, item_length, batch_size, width), generator, zero_vector_rate)
    query = torch.randint(0, items - 1, (batch_size,), generator=generator)
    return associative_recall_sequences(content, query)


def associative_recall_sequences(content: torch.Tensor, query: torch.Tensor):
    """Given items content (L, item_length, B, width) and the queried item's index (B,), each below L-1: the
    inputs and targets of associative recall (see ``associative_recall_batch``)."""
    items, item_length, batch_size, width = content.shape
    step = item_length + 1
    inputs = torch.zeros((items + 1) * step + item_length, batch_size, width + 2)
    for i in range(items):
        inputs[i * step, :, width] = 1.0
        inputs[i * step + 1:(i + 1) * step, :, :width] = content[i]
    batch = torch.arange(batch_size)
    inputs[items * step, :, width + 1] = 1.0
    inputs[items * step + 1:(items + 1) * step, :, :width] = content[query, :, batch].transpose(0, 1)
    targets = content[query + 1, :, batch].transpose(0, 1)
    return inputs, targets


class AlgorithmicTasks(Dataset):
    """An endless stream of training batches, addressed by index: batch ``i`` is drawn (its length uniformly from
    [min_length, max_length], then its bits) from a generator seeded by ``(seed, i)`` alone. So the stream is the
    same whatever is resumed, prefetched or split across processes: a run resumed from a checkpoint continues it
    where it stopped (the loader's sampler says where), rather than starting it again.

    With ``mixed_lengths`` every sequence of a batch draws its own length; the shorter ones are padded at the end
    with blank steps, and a batch is (inputs, targets, mask): the targets on the inputs' time axis, each sequence's
    at its own last steps, and the mask marking them (what the cost counts). A causal model's outputs on a
    sequence's own steps do not depend on the padding after them, so each sequence is the task exactly."""

    def __init__(self, make_batch, min_length: int, max_length: int, seed: int, mixed_lengths: bool = False,
                 batch_size: int = 1):
        self.make_batch, self.min_length, self.max_length, self.seed = make_batch, min_length, max_length, seed
        self.mixed_lengths, self.batch_size = mixed_lengths, batch_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        # torch's CPU generator keeps only the low 32 bits of its seed, so (seed, i) is folded into 32 bits with
        # Knuth's multiplicative hash (seed 0 gives seed i, as before); seed * 2**40 + i lost the seed entirely
        generator = torch.Generator().manual_seed((self.seed * 2654435761 + i) % 2**32)
        if not self.mixed_lengths:
            length = int(torch.randint(self.min_length, self.max_length + 1, (), generator=generator))
            return self.make_batch(length, generator)
        lengths = torch.randint(self.min_length, self.max_length + 1, (self.batch_size,), generator=generator)
        sequences = [self.make_batch(int(n), generator, 1) for n in lengths]
        steps = max(x.shape[0] for x, _ in sequences)
        inputs = sequences[0][0].new_zeros(steps, self.batch_size, sequences[0][0].shape[-1])
        targets = sequences[0][1].new_zeros(steps, self.batch_size, sequences[0][1].shape[-1])
        mask = torch.zeros(steps, self.batch_size, dtype=torch.bool)
        for b, (x, y) in enumerate(sequences):
            inputs[:len(x), b] = x[:, 0]
            targets[len(x) - len(y):len(x), b] = y[:, 0]
            mask[len(x) - len(y):len(x), b] = True
        return inputs, targets, mask


class EpochRange(EpochOrder, DistributedSampler):
    """Epoch ``e`` is the stream's batches ``e * n`` to ``(e + 1) * n - 1``.

    A ``DistributedSampler`` only in type: under DDP Lightning then leaves it alone (each rank already reads its own
    stream, seeded by its rank), where it would wrap any other sampler in one that never passes the epoch on.
    """

    def order(self) -> list[int]:
        return list(range(self.epoch * self.n, (self.epoch + 1) * self.n))


class AlgorithmicTasksDataModule(L.LightningDataModule):
    """Copy, repeat copy or associative recall, generated on the fly with fixed, seeded validation and test sets.

    Args:
        task: which task.
        batch_size: sequences per batch.
        mixed_lengths: draw every training sequence's length on its own, so that each step's gradient covers the
            whole range of lengths (padded batches, see ``AlgorithmicTasks``); else one length per batch, which
            costs fewer steps (a batch is as long as its own sequences) but gives each step one length's gradient.
            Validation and test batches are one length each either way.
        min_length, max_length: training lengths: the copy length, the repeat-copy length, or the number of
            recall items.
        min_repeats, max_repeats: repeat copy's number of repeats (training and validation).
        width: bits per vector (8 for copy and repeat copy, 6 for recall in the paper).
        item_length: vectors per recall item (3).
        batches_per_epoch: training batches between validations.
        val_per_length: validation sequences at every training length (one batch per length).
        test_lengths: the lengths of ``dl4 test``, beyond the training range to measure generalisation.
        test_per_length: test sequences per length.
        seed: seeds the training stream (offset by the process rank) and the fixed validation and test sets.
        zero_vector_rate: the probability that a training vector is all zeros instead of fair bits (validation and
            test keep fair bits, where 1 in 2^width is all zeros). During the output phase the input is all zeros
            too, so a network can learn "an all-zero input means: answer now"; fair bits show it an all-zero vector
            among the items too rarely to unlearn that (1 in 256 at width 8), and such a run fails on the
            sequences that hold one (docs/results/ntm.md, issue 35).
        predict_path: what ``dl4 predict`` reads: a text file of bit sequences, one vector of ``width`` bits per
            line, a blank line between sequences (``datamodules/user_inputs.py``). For associative recall a
            sequence is its items' vectors (``item_length`` each), the last item being the query.
        predict_length, predict_count, predict_seed: without a file, ``predict_count`` sequences of this length
            (default ``max_length``) drawn from ``predict_seed``.
        predict_repeats: repeat copy's n for the predicted sequences (default ``max_repeats``).
    """

    def __init__(self, task: Task = "copy", batch_size: int = 32, min_length: int = 1, max_length: int = 20,
                 min_repeats: int = 1, max_repeats: int = 10, width: int = 8, item_length: int = 3,
                 batches_per_epoch: int = 100, val_per_length: int = 32,
                 test_lengths: Sequence[int] = (10, 20, 30, 50, 80, 120), test_per_length: int = 64, seed: int = 0,
                 mixed_lengths: bool = False, zero_vector_rate: float = 0.0, predict_path: str | None = None,
                 predict_length: int | None = None, predict_count: int = 8, predict_seed: int = 0,
                 predict_repeats: int | None = None):
        super().__init__()
        check_positive("data", batch_size=batch_size, width=width, item_length=item_length,
                       batches_per_epoch=batches_per_epoch, val_per_length=val_per_length, test_lengths=list(test_lengths),
                       test_per_length=test_per_length, predict_length=predict_length,
                       predict_count=predict_count, predict_repeats=predict_repeats)
        if task not in ("copy", "repeat_copy", "associative_recall"):
            raise ConfigError(f"data.task: unknown task {task!r}; choose copy, repeat_copy or associative_recall")
        if not 1 <= min_length <= max_length:
            raise ConfigError(f"data.min_length and data.max_length must satisfy 1 <= min <= max, got "
                             f"{min_length} and {max_length}")
        if not 0 <= zero_vector_rate < 1:
            raise ConfigError(f"data.zero_vector_rate must be in [0, 1), got {zero_vector_rate}")
        if task == "associative_recall" and min_length < 2:
            raise ConfigError("data.min_length: associative recall needs at least 2 items")
        if not 1 <= min_repeats <= max_repeats:
            raise ConfigError(f"data.min_repeats and data.max_repeats must satisfy 1 <= min <= max, got "
                             f"{min_repeats} and {max_repeats}")
        self.save_hyperparameters()
        self.task = task

    @property
    def input_size(self) -> int:
        return self.hparams.width + (1 if self.task == "copy" else 2)

    @property
    def output_size(self) -> int:
        return self.hparams.width + (1 if self.task == "repeat_copy" else 0)

    @property
    def val_lengths(self) -> list[int]:
        """The lengths of the validation set: every training length, one batch each."""
        return list(range(self.hparams.min_length, self.hparams.max_length + 1))

    @property
    def test_lengths(self) -> list[int]:
        """The lengths of the test set (generalisation), one batch each."""
        return list(self.hparams.test_lengths)

    def make_batch(self, length: int, generator: torch.Generator, batch_size: int | None = None,
                   zero_vector_rate: float = 0.0):
        """One batch of ``batch_size`` sequences of the given length (number of items for recall)."""
        hp, batch_size = self.hparams, batch_size or self.hparams.batch_size
        if self.task == "copy":
            return copy_batch(batch_size, length, hp.width, generator, zero_vector_rate)
        if self.task == "repeat_copy":
            repeats = int(torch.randint(hp.min_repeats, hp.max_repeats + 1, (), generator=generator))
            return repeat_copy_batch(batch_size, length, repeats, hp.width, hp.min_repeats, hp.max_repeats,
                                     generator, zero_vector_rate)
        return associative_recall_batch(batch_size, length, hp.width, hp.item_length, generator, zero_vector_rate)

    def make_training_batch(self, length: int, generator: torch.Generator, batch_size: int | None = None):
        """A training batch: ``make_batch`` with the training stream's ``zero_vector_rate``."""
        return self.make_batch(length, generator, batch_size, self.hparams.zero_vector_rate)

    def fixed_batch(self, n: int, seed: int = 0, device=None, length: int | None = None):
        """``n`` sequences of ``length`` (default the longest training length) drawn from ``seed``: (inputs,
        targets), (T, n, C) each, on ``device``."""
        inputs, targets = self.make_batch(length or self.hparams.max_length, torch.Generator().manual_seed(seed), n)
        return inputs.to(device or "cpu"), targets.to(device or "cpu")

    def _fixed_set(self, lengths: Sequence[int], per_length: int, seed: int) -> list:
        """One batch per length, as (inputs, targets, length): the length travels with its batch, so it stays
        right when a distributed sampler deals the batches out to several processes."""
        generator = torch.Generator().manual_seed(seed)
        return [(*self.make_batch(length, generator, per_length), length) for length in lengths]

    def read_predict_inputs(self) -> None:
        """``dl4 predict``'s sequences, each one item (inputs (T, C), targets (T_out, C')): from the file, or drawn."""
        hp = self.hparams
        repeats = hp.predict_repeats or hp.max_repeats
        if hp.predict_path is None:
            length = hp.predict_length or hp.max_length
            inputs, targets = self.make_batch(length, torch.Generator().manual_seed(hp.predict_seed),
                                              hp.predict_count) if self.task != "repeat_copy" else \
                repeat_copy_batch(hp.predict_count, length, repeats, hp.width, hp.min_repeats, hp.max_repeats,
                                  torch.Generator().manual_seed(hp.predict_seed))
            self.predict_names = [f"length {length}, seed {hp.predict_seed}, sequence {i}"
                                  for i in range(hp.predict_count)]
            self.predict_items = list(zip(inputs.unbind(1), targets.unbind(1)))
            return
        self.predict_names, sequences = read_bit_sequences(hp.predict_path, hp.width)
        self.predict_items = []
        for name, seq in zip(self.predict_names, sequences):
            if self.task == "copy":
                inputs, targets = copy_sequences(seq[:, None])
            elif self.task == "repeat_copy":
                inputs, targets = repeat_copy_sequences(seq[:, None], repeats, hp.min_repeats, hp.max_repeats)
            else:
                inputs, targets = associative_recall_sequences(*self.recall_items(name, seq))
            self.predict_items.append((inputs[:, 0], targets[:, 0]))

    def recall_items(self, name: str, seq: torch.Tensor):
        """A recall sequence from a file -> (content (L, item_length, 1, width), the query's index (1,))."""
        k = self.hparams.item_length
        if len(seq) % k or len(seq) < 3 * k:
            raise InputError(f"{self.hparams.predict_path}, sequence at line {name.rsplit(':', 1)[1]}: associative "
                             f"recall needs at least 2 items and the query, each {k} vectors (data.item_length); "
                             f"got {len(seq)} vectors")
        items = seq.view(-1, k, 1, seq.shape[-1])
        content, query = items[:-1], items[-1]
        matches = [i for i in range(len(content) - 1) if torch.equal(content[i], query)]
        if not matches:
            raise InputError(f"{self.hparams.predict_path}, sequence at line {name.rsplit(':', 1)[1]}: the query "
                             "(the last item) must repeat one of the items before the last, whose successor is "
                             "the answer")
        return content, torch.tensor([matches[0]])

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage == "predict":
            return self.read_predict_inputs()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self.train_set = AlgorithmicTasks(self.make_training_batch, hp.min_length, hp.max_length, hp.seed + 1000 * rank,
                                          hp.mixed_lengths, hp.batch_size)
        self.val_batches = self._fixed_set(self.val_lengths, hp.val_per_length, hp.seed + 1)
        self.test_batches = self._fixed_set(self.test_lengths, hp.test_per_length, hp.seed + 2)

    def train_dataloader(self):
        # stateful: a checkpoint saved mid-epoch records how far into the epoch's range the loader was
        return StatefulDataLoader(self.train_set, batch_size=None, sampler=EpochRange(self.hparams.batches_per_epoch),
                                  generator=torch.Generator())

    def val_dataloader(self):  # one batch per length, each on one process (eval_sampler)
        return DataLoader(self.val_batches, batch_size=None, sampler=eval_sampler(self.val_batches))

    def test_dataloader(self):
        return DataLoader(self.test_batches, batch_size=None, sampler=eval_sampler(self.test_batches))

    def predict_dataloader(self):  # one sequence a batch (they may differ in length), time-major (T, 1, C)
        return DataLoader(self.predict_items, batch_size=1, sampler=eval_sampler(self.predict_items),
                          collate_fn=lambda items: tuple(t[:, None] for t in items[0]))
