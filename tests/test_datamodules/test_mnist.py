"""The MNIST datamodule on the real files."""

import pytest
import torch

from datamodules import DatasetNotFoundError, MNISTDataModule


def test_split_sizes_and_labels(mnist):
    assert len(mnist.train_set) == 55000 and len(mnist.val_set) == 5000 and len(mnist.test_set) == 10000
    x, y = mnist.train_set.tensors
    assert x.shape == (55000, 1, 28, 28) and x.dtype == torch.uint8
    train_labels = torch.cat([mnist.train_set.tensors[1], mnist.val_set.tensors[1]])
    assert torch.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_split_is_deterministic_and_follows_the_seed(mnist_root):
    a, b, c = (MNISTDataModule(str(mnist_root), download=False, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])


def test_batches_are_float_images_in_unit_range(mnist):
    x, y = mnist.on_after_batch_transfer(next(iter(mnist.train_dataloader())), 0)
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (128,)
    assert 0 <= x.min() and x.max() <= 1 and 0.1 < x.mean() < 0.16


def test_fixed_binarisation_is_binary_and_repeatable(mnist_root):
    a, b = (MNISTDataModule(str(mnist_root), download=False, binarize="fixed") for _ in range(2))
    a.setup(), b.setup()
    for split in ("train_set", "val_set", "test_set"):
        assert set(getattr(a, split).tensors[0].unique().tolist()) == {0, 255}
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])


def test_dynamic_binarisation_resamples_training_batches_only(mnist_root):
    dm = MNISTDataModule(str(mnist_root), download=False, binarize="dynamic")
    dm.setup()
    dm.trainer = type("T", (), {"training": True})()  # what on_after_batch_transfer reads of the trainer
    batch = dm.train_set.__getitems__(list(range(256)))
    x1, _ = dm.on_after_batch_transfer(batch, 0)
    x2, _ = dm.on_after_batch_transfer(batch, 0)
    assert set(x1.unique().tolist()) == {0.0, 1.0} and not torch.equal(x1, x2)
    grey = batch[0].float() / 255
    assert (x1.mean() - grey.mean()).abs() < 0.005  # Bernoulli(intensity): same mean
    assert set(dm.val_set.tensors[0].unique().tolist()) == {0, 255}  # evaluation images binarised once


def test_missing_folder_says_where_it_looked_and_what_to_do(tmp_path):
    dm = MNISTDataModule(str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in message
    assert "DL4_DATA_DIR" in message and "download" in message
    assert not (tmp_path / "nowhere").exists()  # nothing created


def test_data_dir_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DL4_DATA_DIR", str(tmp_path))
    assert MNISTDataModule().data_dir == str(tmp_path)


def test_val_size_is_checked():
    with pytest.raises(ValueError, match="data.val_size"):
        MNISTDataModule(val_size=60000)


def test_under_ddp_evaluation_deals_each_example_to_one_process_once(monkeypatch):
    """The evaluation loaders' sampler under a process group of 2: 1,001 examples go out as 501 + 500, each once.
    Lightning's default for evaluation, a DistributedSampler, pads rank 1 with a second copy of example 0."""
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    from datamodules.tensors import eval_sampler

    dataset = list(range(1001))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    dealt = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
        dealt.append(list(eval_sampler(dataset)))
    assert [len(d) for d in dealt] == [501, 500] and sorted(dealt[0] + dealt[1]) == dataset
    padded = [list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(padded[0] + padded[1]) == [0, *dataset]  # what eval_sampler avoids
