"""The NTM paper's task generators: shapes, where the markers are, and that every target follows its task's rule."""

import pytest
import torch

from datamodules import AlgorithmicTasksDataModule
from datamodules.algorithmic import (associative_recall_batch, copy_batch, normalised_repeats, random_bits,
                                    repeat_copy_batch)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_copy_sequence_delimiter_then_blank_output_phase():
    inputs, targets = copy_batch(4, 6, 8, gen())
    assert inputs.shape == (13, 4, 9) and targets.shape == (6, 4, 8)
    assert set(inputs.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(targets, inputs[:6, :, :8])  # the target is the input sequence
    assert (inputs[:6, :, 8] == 0).all() and (inputs[6, :, 8] == 1).all() and (inputs[6, :, :8] == 0).all()
    assert (inputs[7:] == 0).all()  # no input during the output phase


def test_repeat_copy_delimits_the_input_repeats_and_ends_with_a_marker():
    inputs, targets = repeat_copy_batch(3, 4, 5, 8, 1, 10, gen())
    assert inputs.shape == (4 + 2 + 21, 3, 10) and targets.shape == (21, 3, 9)
    seq = inputs[:4, :, :8]
    assert (inputs[:4, :, 8:] == 0).all() and (inputs[4, :, 8] == 1).all() and (inputs[4, :, :8] == 0).all()
    # 5 repeats of 1-10, normalised by the mean 5.5 and the standard deviation sqrt(99 / 12) of U{1..10}
    assert torch.allclose(inputs[5, :, 9], torch.tensor((5 - 5.5) / (99 / 12) ** 0.5))
    for r in range(5):
        torch.testing.assert_close(targets[4 * r:4 * (r + 1), :, :8], seq)
    assert (targets[:-1, :, 8] == 0).all() and (targets[-1, :, 8] == 1).all() and (targets[-1, :, :8] == 0).all()
    assert (inputs[6:] == 0).all()


def test_repeat_counts_have_mean_zero_and_variance_one():
    counts = torch.tensor([normalised_repeats(n, 1, 10) for n in range(1, 11)])
    torch.testing.assert_close(counts.mean(), torch.tensor(0.0))
    torch.testing.assert_close(counts.var(unbiased=False), torch.tensor(1.0))
    assert normalised_repeats(3, 3, 3) == 0.0  # a single count is 0, not a division by zero


def test_associative_recall_target_is_the_item_after_the_query():
    items, length, width = 5, 3, 6
    inputs, targets = associative_recall_batch(16, items, width, length, gen())
    step = length + 1
    assert inputs.shape == ((items + 1) * step + length, 16, width + 2) and targets.shape == (length, 16, width)
    for b in range(16):
        stored = [inputs[i * step + 1:(i + 1) * step, b, :width] for i in range(items)]
        assert all(inputs[i * step, b, width] == 1 for i in range(items))  # item delimiters
        assert inputs[items * step, b, width + 1] == 1  # the query's delimiter
        query = inputs[items * step + 1:(items + 1) * step, b, :width]
        (position,) = [i for i, item in enumerate(stored[:-1]) if torch.equal(item, query)][:1]
        torch.testing.assert_close(targets[:, b], stored[position + 1])
    assert (inputs[(items + 1) * step:] == 0).all()


def test_datamodule_sets_sizes_and_seeded_fixed_sets():
    dm = AlgorithmicTasksDataModule(task="copy", batch_size=8, min_length=2, max_length=5, val_per_length=4,
                                    test_lengths=[10, 30], test_per_length=3)
    dm.setup()
    assert (dm.input_size, dm.output_size) == (9, 8)
    assert [(x.shape[0], n) for x, _, n in dm.val_batches] == [(2 * n + 1, n) for n in range(2, 6)]
    assert [(y.shape, n) for _, y, n in dm.test_batches] == [((10, 3, 8), 10), ((30, 3, 8), 30)]
    again = AlgorithmicTasksDataModule(task="copy", batch_size=8, min_length=2, max_length=5, val_per_length=4,
                                       test_lengths=[10, 30], test_per_length=3)
    again.setup()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(dm.val_batches, again.val_batches))
    lengths = {y.shape[0] for _, y in (batch for batch, _ in zip(dm.train_dataloader(), range(40)))}
    assert lengths <= set(range(2, 6)) and len(lengths) > 1
    assert len(list(dm.train_dataloader())) == dm.hparams.batches_per_epoch
    assert (AlgorithmicTasksDataModule(task="repeat_copy").input_size,
            AlgorithmicTasksDataModule(task="repeat_copy").output_size) == (10, 9)
    assert AlgorithmicTasksDataModule(task="associative_recall", width=6, min_length=2).input_size == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "sort"}, "data.task"),
    ({"min_length": 5, "max_length": 3}, "min_length"),
    ({"task": "associative_recall", "min_length": 1}, "at least 2 items"),
    ({"min_repeats": 0}, "min_repeats"),
    ({"zero_vector_rate": 1.0}, "zero_vector_rate"),
    ({"zero_vector_rate": -0.1}, "zero_vector_rate"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlgorithmicTasksDataModule(**kwargs)


def test_each_ddp_rank_trains_on_its_own_sequences_reproducibly_and_all_validate_on_the_same():
    """Under DDP each process generates its training stream from seed + 1000 x its rank: the ranks differ, the same
    rank draws the same again; the fixed validation set is the same for all (dealt out by the sampler)."""
    from types import SimpleNamespace

    def first(rank):
        dm = AlgorithmicTasksDataModule(task="copy", batch_size=4, seed=7)
        dm.trainer = SimpleNamespace(global_rank=rank)
        dm.setup("fit")
        return dm.train_set[0][0], dm.val_batches[0][0]

    (train0, val0), (train1, val1), (again0, _) = first(0), first(1), first(0)
    assert torch.equal(train0, again0) and not (train0.shape == train1.shape and torch.equal(train0, train1))
    assert torch.equal(val0, val1)


@pytest.mark.parametrize("task", ["copy", "repeat_copy", "associative_recall"])
def test_mixed_length_batches_hold_each_sequence_as_its_task_padded_after_its_end(task):
    dm = AlgorithmicTasksDataModule(task=task, batch_size=16, min_length=2, max_length=6, mixed_lengths=True, seed=3)
    dm.setup("fit")
    inputs, targets, mask = dm.train_set[5]
    assert inputs.shape[:2] == targets.shape[:2] == mask.shape == (inputs.shape[0], 16)
    again = dm.train_set[5]
    assert all(torch.equal(a, b) for a, b in zip((inputs, targets, mask), again))  # the stream is indexed
    ends = []
    for b in range(16):
        steps = mask[:, b].nonzero().flatten()
        assert torch.equal(steps, torch.arange(steps[0], steps[-1] + 1))  # one block of output steps
        end = int(steps[-1]) + 1
        ends.append(end)
        assert not inputs[end:, b].any() and not targets[~mask[:, b], b].any()  # blank padding, no targets
        if task == "copy":  # L vectors, the delimiter at L, then the same L vectors as targets
            n = len(steps)
            assert inputs[n, b, -1] == 1 and torch.equal(targets[n + 1:2 * n + 1, b], inputs[:n, b, :-1])
    assert len(set(ends)) > 1  # the lengths differ within the batch
    assert max(ends) == inputs.shape[0]


def test_one_length_per_batch_unless_mixed():
    dm = AlgorithmicTasksDataModule(batch_size=4, seed=3)
    dm.setup("fit")
    assert len(dm.train_set[5]) == 2


@pytest.mark.parametrize("task", ["copy", "repeat_copy", "associative_recall"])
def test_zero_vector_rate_blanks_training_vectors_only_and_keeps_the_default_stream(task):
    """``zero_vector_rate`` makes that fraction of training vectors all zeros (what the input is in the output
    phase), the rest fair bits; validation and test stay fair bits; at 0 a batch draws what it drew before the
    option (no extra random numbers), so existing runs are unchanged (`benchmarks/first_steps.py --check`)."""
    width = 6 if task == "associative_recall" else 8
    kwargs = dict(task=task, batch_size=64, min_length=4, max_length=8, width=width, seed=5)
    plain, blanked = AlgorithmicTasksDataModule(**kwargs), AlgorithmicTasksDataModule(**kwargs, zero_vector_rate=0.25)
    plain.setup("fit")
    blanked.setup("fit")
    # at rate 0: the bits the generators drew before the option, and no further random number drawn
    drawn, before = gen(1), gen(1)
    assert torch.equal(random_bits((6, 4, width), drawn), torch.randint(0, 2, (6, 4, width), generator=before).float())
    assert torch.equal(torch.rand(3, generator=drawn), torch.rand(3, generator=before))
    for a, b in zip(plain.val_batches + plain.test_batches, blanked.val_batches + blanked.test_batches):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    def zero_fraction(dm):  # over the training targets' vectors (repeat copy's last step is its end marker)
        targets = [dm.train_set[i][1] for i in range(40)]
        if task == "repeat_copy":
            targets = [t[:-1] for t in targets]
        vectors = torch.cat([t[..., :width].reshape(-1, width) for t in targets])
        return (vectors.sum(1) == 0).float().mean().item()

    assert zero_fraction(plain) < 0.03  # 1 in 2^width: 1/256, or 1/64 for recall's 6 bits
    assert 0.2 < zero_fraction(blanked) < 0.32
    if task == "copy":  # and they are the items the network sees: copy's targets are its input vectors
        x, y = blanked.train_set[3]
        assert torch.equal(x[:y.shape[0], :, :width], y)
