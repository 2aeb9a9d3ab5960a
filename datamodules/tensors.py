"""Whole datasets kept as tensors, indexed a batch at a time.

The DataLoader calls ``__getitems__`` with the sampler's list of indices, so a batch is one fancy-indexing op
instead of ``batch_size`` ``__getitem__`` calls plus a collate. Samplers (shuffle, DistributedSampler under DDP)
work unchanged.
"""

import torch
from torch.utils.data import DataLoader, Dataset


class TensorBatchDataset(Dataset):
    def __init__(self, *tensors: torch.Tensor):
        assert all(len(t) == len(tensors[0]) for t in tensors), "tensors must have the same length"
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices, device=self.tensors[0].device)
        return tuple(t[index] for t in self.tensors)

    def to(self, device) -> "TensorBatchDataset":
        return TensorBatchDataset(*(t.to(device) for t in self.tensors))


def _already_batched(batch):
    return list(batch)


def tensor_loader(dataset: TensorBatchDataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      collate_fn=_already_batched)


def first_examples(datamodule, dataset: TensorBatchDataset, n: int, device=None):
    """The first ``n`` examples of ``dataset`` as one batch on ``device``, through the datamodule's transfer hooks,
    as a validation batch would arrive in a step: the fixed input of the picture callbacks."""
    batch = dataset.__getitems__(list(range(min(n, len(dataset)))))
    batch = datamodule.transfer_batch_to_device(batch, torch.device(device or "cpu"), 0)
    return datamodule.on_after_batch_transfer(batch, 0)
