"""Whole datasets kept as tensors, indexed a batch at a time.

The DataLoader calls ``__getitems__`` with the sampler's list of indices, so a batch is one fancy-indexing op
instead of ``batch_size`` ``__getitem__`` calls plus a collate. Samplers (shuffle, DistributedSampler under DDP)
work unchanged.

Resuming is exact: the training order is a function of the seed and the epoch only (``EpochShuffle``, as
``DistributedSampler`` orders under DDP), and the loader is torchdata's ``StatefulDataLoader`` (a drop-in
``DataLoader`` with ``state_dict``), whose position Lightning saves in a mid-epoch checkpoint, so a run resumed
there sees the rest of the same epoch. (With torch's ``RandomSampler`` the next epoch's order would depend on
where the previous epoch's iterator stopped, which ``limit_train_batches`` makes differ between a run and its
resumption.)
"""

import warnings

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

# torchdata 0.11 calls torch.set_vital, deprecated in torch 2.14, on every iter(); harmless
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


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


class EpochOrder(Sampler[int]):
    """A sampler whose order is a function of the epoch alone (Lightning calls ``set_epoch``), and which resumes
    mid-epoch: its state (the epoch and how many indices it gave) goes into the loader's, which Lightning saves.

    The order is drawn at the first index, not when the iterator is made: a resumed run makes its iterator, and
    restores it, before Lightning sets the epoch. (torchdata's fallback, skipping the indices given so far on the
    fresh iterator, would skip them in the wrong epoch's order for the same reason.)
    """

    def __init__(self, n: int):
        self.n, self.epoch, self._skip, self._given = n, 0, 0, 0

    def order(self) -> list[int]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "given": self._given}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._skip = state["epoch"], state["given"]

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._given = skip
        for index in self.order()[skip:]:
            self._given += 1
            yield index


class EpochShuffle(EpochOrder):
    """A new random order each epoch, drawn from ``seed + epoch``; the seed is torch's initial seed, i.e.
    ``seed_everything``'s."""

    def __init__(self, n: int, seed: int | None = None):
        super().__init__(n)
        self.seed = torch.initial_seed() % 2**62 if seed is None else seed

    def order(self) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()


def _already_batched(batch):
    return list(batch)


def eval_sampler(dataset) -> Sampler | None:
    """The order an evaluation sees ``dataset`` in: as it is on one process; under DDP, Lightning's
    ``UnrepeatedDistributedSampler``, which deals the examples out (rank r gets r, r + N, ...) without padding the
    shards to one length. Lightning's default for validation and test, a ``DistributedSampler``, repeats up to N - 1
    examples to even the shards out, and a metric over the whole set would count those twice."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None


def tensor_loader(dataset: TensorBatchDataset, batch_size: int, shuffle: bool,
                  drop_last: bool = False) -> StatefulDataLoader:
    # generator: each new iterator draws a worker base seed from it, which would otherwise be a draw from the
    # global generator at a point that differs between a run and its resumption
    return StatefulDataLoader(dataset, batch_size=batch_size, drop_last=drop_last, collate_fn=_already_batched,
                              sampler=EpochShuffle(len(dataset)) if shuffle else eval_sampler(dataset),
                              generator=torch.Generator())


def first_examples(datamodule, dataset: TensorBatchDataset, n: int, device=None):
    """The first ``n`` examples of ``dataset`` as one batch on ``device``, through the datamodule's transfer hooks,
    as a validation batch would arrive in a step: the fixed input of the picture callbacks."""
    batch = dataset.__getitems__(list(range(min(n, len(dataset)))))
    batch = datamodule.transfer_batch_to_device(batch, torch.device(device or "cpu"), 0)
    return datamodule.on_after_batch_transfer(batch, 0)
