"""Batches for training and evaluation: the validation split, DataLoaders, device-resident
tensor batches for in-memory data, and the shard of one rank in distributed training."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, random_split

from torchwire.service.core.datasets import ArrayDataset
from torchwire.service.errors import InvalidArgument

FAST_PATH_MAX_BYTES = 2 * 1024 * 1024 * 1024
"""In-memory datasets up to this size train from device-resident tensors."""


def split_sizes(
    total: int, val_fraction: float, batch_size: int, drop_last: bool, world_size: int = 1
) -> tuple[int, int]:
    """Sizes of the training and validation subsets of `total` samples; with `world_size`
    processes, each trains on its share of the training subset.

    Raises:
        InvalidArgument: no training sample would be left, or `drop_last` would drop them all.
    """
    n_val = max(1, round(total * val_fraction)) if val_fraction > 0 else 0
    n_train = total - n_val
    if n_train < 1:
        raise InvalidArgument.field(
            "config.val_fraction", val_fraction, f"leaves no training sample out of {total}"
        )
    share = -(-n_train // world_size)
    if drop_last and share < batch_size:
        raise InvalidArgument.field(
            "config.drop_last",
            True,
            f"with batch_size {batch_size} it drops all {share} training samples of each of "
            f"the {world_size} processes",
        )
    return n_train, n_val


@dataclass(frozen=True)
class Shard:
    """This process's part of the training data in distributed training: every rank draws the
    same permutation (seeded by `seed` and the epoch) and takes every `world_size`-th sample
    from `rank` on, padded so that every rank runs the same number of batches
    (DistributedSampler's scheme)."""

    rank: int
    world_size: int
    seed: int

    def order(self, indices: torch.Tensor, shuffle: bool, epoch: int) -> torch.Tensor:
        """This rank's indices for `epoch`."""
        if shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            indices = indices[torch.randperm(len(indices), generator=generator)]
        padded = -(-len(indices) // self.world_size) * self.world_size
        repeats = -(-padded // len(indices))  # more ranks than samples: repeat them all
        return indices.repeat(repeats)[:padded][self.rank :: self.world_size]


class TensorBatches:
    """Batches sliced from tensors that already live on the training device.

    The fast path for in-memory data: no per-sample `__getitem__`, no collate, and one copy
    to the device for the whole run instead of one per batch. With a `shard`, only this
    rank's part of each epoch (see `set_epoch`).
    """

    def __init__(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.features, self.targets = features, targets
        self.indices = indices
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.shard = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Picks the epoch's permutation of a sharded run (DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        count = len(self.indices)
        if self.shard is not None:
            count = -(-count // self.shard.world_size)
        full, rest = divmod(count, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        if self.shard is not None:
            order = self.shard.order(order, self.shuffle, self.epoch)
        elif self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        order = order.to(self.features.device)
        for step in range(len(self)):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.features[batch], self.targets[batch]


Batches = DataLoader | TensorBatches


@dataclass(frozen=True)
class Loaders:
    """The training batches, the validation batches (None without validation), and sizes."""

    train: Batches
    val: Batches | None
    train_samples: int
    val_samples: int
    sampler: DistributedSampler | None = None

    def set_epoch(self, epoch: int) -> None:
        """Tells a sharded run which epoch begins, so that every rank shuffles alike."""
        if isinstance(self.train, TensorBatches):
            self.train.set_epoch(epoch)
        elif self.sampler is not None:
            self.sampler.set_epoch(epoch)


def split_and_load(
    dataset: Dataset,
    *,
    val_dataset: Dataset | None = None,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int,
    val_fraction: float,
    seed: int,
    device: torch.device,
    shard: Shard | None = None,
) -> Loaders:
    """Holds out a validation subset with `random_split` and batches both parts.

    `val_dataset` holds the same samples as `dataset` with the evaluation preprocessing; the
    validation subset is taken from it (None: from `dataset`). In-memory array data without
    transforms, loaded in-process (`num_workers` 0), takes the fast path: both subsets move to
    the device once and batches are sliced from there. Anything else goes through DataLoaders
    (pinned memory on CUDA). The same seed gives the same split and the same shuffling order.
    With a `shard` (distributed training), every rank holds out the same validation subset and
    trains on its own part of the rest.

    Raises:
        InvalidArgument: the split leaves no training sample.
    """
    n_train, n_val = split_sizes(len(dataset), val_fraction, batch_size, drop_last)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    train_set, val_set = random_split(dataset, [n_train, n_val], generator=generator)
    if val_dataset is not None:
        val_set = Subset(val_dataset, val_set.indices)
    val_batch = max(batch_size, 256)
    if _in_memory(dataset) and _in_memory(val_dataset or dataset) and num_workers == 0:
        assert isinstance(dataset, ArrayDataset)
        features, targets = dataset.tensors(device)
        train = _resident_train_batches(
            features, targets, train_set, batch_size, shuffle, drop_last, generator, shard
        )
        val = TensorBatches(features, targets, torch.tensor(val_set.indices), val_batch)
        return Loaders(train, val if n_val else None, n_train, n_val)
    sampler = _distributed_sampler(train_set, shuffle, shard)
    common = _loader_options(num_workers, device)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        generator=generator,
        **common,
    )
    val_loader = DataLoader(val_set, batch_size=val_batch, shuffle=False, **common)
    return Loaders(train_loader, val_loader if n_val else None, n_train, n_val, sampler)


def _resident_train_batches(
    features: torch.Tensor,
    targets: torch.Tensor,
    train_set: Subset,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    generator: torch.Generator,
    shard: Shard | None,
) -> TensorBatches:
    """The training subset's batches, sliced from the whole data already on the device."""
    indices = torch.tensor(train_set.indices)
    return TensorBatches(
        features, targets, indices, batch_size, shuffle, drop_last, generator, shard
    )


def _distributed_sampler(
    train_set: Dataset, shuffle: bool, shard: Shard | None
) -> DistributedSampler | None:
    """The sampler that gives this rank its part of each epoch (None: not sharded)."""
    if shard is None:
        return None
    return DistributedSampler(train_set, shard.world_size, shard.rank, shuffle, seed=shard.seed)


def _loader_options(num_workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader options shared by the training and validation loaders."""
    return {
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": num_workers > 0,
    }


def _in_memory(dataset: Dataset) -> bool:
    """Whether `dataset` can take the fast path: plain arrays, no transform, not too large."""
    return (
        isinstance(dataset, ArrayDataset)
        and dataset.transform is None
        and dataset.nbytes <= FAST_PATH_MAX_BYTES
    )


def eval_loader(dataset: Dataset, batch_size: int, device: torch.device) -> Batches:
    """Ordered, unshuffled batches for evaluation (the fast path where it applies)."""
    if _in_memory(dataset):
        assert isinstance(dataset, ArrayDataset)
        features, targets = dataset.tensors(device)
        return TensorBatches(features, targets, torch.arange(len(dataset)), batch_size)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda"
    )
