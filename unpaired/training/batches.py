"""Training batches: the shuffled order of an epoch and the (A, B) pairs it addresses.

Each item of an epoch carries its own seed for augmentation and pairing, so the data a run
sees is a pure function of (seed, epoch, item): the same for any number of loader workers
and after a resume mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from unpaired.plugin_api.data import UnpairedData


class TrainPairs(Dataset):
    """Dataset of (A, B) training pairs addressed by ``(index, seed)`` items from :class:`EpochOrder`."""

    def __init__(self, data: UnpairedData):
        self.data = data

    def __len__(self) -> int:
        return self.data.train_length

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = item
        return self.data.train_pair(index, torch.Generator().manual_seed(seed))


class EpochOrder(Sampler):
    """Shuffled order of one epoch, with a seed per item for its augmentation; a pure function of
    (seed, epoch), optionally starting at item ``start`` (to resume inside an epoch)."""

    def __init__(self, length: int, seed: int, epoch: int, start: int = 0):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        self.order = torch.randperm(length, generator=generator).tolist()
        self.seeds = torch.randint(0, 2**62, (length,), generator=generator).tolist()
        self.start = start

    def __len__(self) -> int:
        return len(self.order) - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(zip(self.order, self.seeds))[self.start :])
