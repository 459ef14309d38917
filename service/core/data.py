"""Datasets and DataLoaders: array-backed Datasets, the built-in digits, the preprocessing
pipeline of a request, and the validation split."""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, random_split

from torchwire.service.core import transforms as tf
from torchwire.service.errors import InvalidArgument

CLASSIFICATION = "classification"
REGRESSION = "regression"
SPLITS = ("train", "test")
FAST_PATH_MAX_BYTES = 2 * 1024 * 1024 * 1024
"""In-memory datasets up to this size train from device-resident tensors."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds: enough to build a model for it and to validate requests."""

    name: str
    builtin: bool
    splits: dict[str, int]
    feature_shape: tuple[int, ...]
    feature_dtype: str
    target_shape: tuple[int, ...]
    classes: tuple[str, ...]
    task: str

    @property
    def output_size(self) -> int:
        """Width of the model head: one logit per class, or one unit per target value."""
        if self.task == CLASSIFICATION:
            return len(self.classes)
        return int(np.prod(self.target_shape)) if self.target_shape else 1


class ArrayDataset(Dataset):
    """A map-style Dataset over feature and target arrays, in memory or memory-mapped.

    Features become float32 tensors of the recorded shape; targets become int64
    class ids (classification) or float32 values (regression).
    """

    def __init__(
        self,
        features: np.ndarray,
        targets: np.ndarray,
        task: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        classes: Sequence[str] = (),
    ) -> None:
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} feature rows but {len(targets)} targets")
        self.features = features
        self.targets = targets
        self.target_dtype = torch.int64 if task == CLASSIFICATION else torch.float32
        self.transform = transform
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def nbytes(self) -> int:
        """Size of the data as training tensors."""
        return 4 * int(np.prod(self.features.shape)) + 8 * len(self.targets)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """All features and targets as tensors on `device` (float32, and int64 or float32)."""
        features = torch.as_tensor(np.asarray(self.features, dtype=np.float32))
        targets = torch.as_tensor(np.asarray(self.targets)).to(self.target_dtype)
        return features.to(device), targets.to(device)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor(self.features[index], dtype=torch.float32)
        if self.transform is not None:
            x = self.transform(x)
        y = torch.tensor(self.targets[index], dtype=self.target_dtype)
        return x, y


def _load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits (shipped in its package), split 80/20, stratified.

    Features are pixel intensities scaled to [0, 1], shaped N,1,8,8 (N,C,H,W).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    targets = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(targets)), test_size=0.2, stratify=targets, random_state=0
    )
    index = train_idx if split == "train" else test_idx
    return images[index], targets[index]


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that ships with the server and needs no download."""

    info: DatasetInfo
    load: Callable[[str], tuple[np.ndarray, np.ndarray]]


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        info=DatasetInfo(
            name="digits",
            builtin=True,
            splits={"train": 1437, "test": 360},
            feature_shape=(1, 8, 8),
            feature_dtype="float32",
            target_shape=(),
            classes=tuple(str(d) for d in range(10)),
            task=CLASSIFICATION,
        ),
        load=_load_digits_split,
    ),
}


class SampleSource(Protocol):
    """One split of a dataset, picklable so that a worker process can open it."""

    info: DatasetInfo
    image_mode: str  # "L" or "RGB" when samples are images, "" when they are tensors

    def open(self, transform: Callable[[Any], Any] | None = None) -> Dataset:
        """The samples, with `transform` applied to each one's features."""
        ...


@dataclass(frozen=True)
class DataPipeline:
    """A source with its training and evaluation preprocessing, and what comes out of them.

    Attributes:
        source: where the samples come from.
        transforms: transform specs for training samples (augmentation included).
        eval_transforms: transform specs for validation, evaluation and Predict.
        info: the source's description, with the feature shape after `eval_transforms`.
    """

    source: SampleSource
    transforms: tuple[tf.Spec, ...]
    eval_transforms: tuple[tf.Spec, ...]
    info: DatasetInfo

    def train_set(self) -> Dataset:
        """The samples as training sees them."""
        return self.source.open(self._compose(self.transforms, "transforms"))

    def eval_set(self) -> Dataset:
        """The samples as validation, Evaluate and Predict see them."""
        return self.source.open(self._compose(self.eval_transforms, "eval_transforms"))

    def _compose(self, specs: tuple[tf.Spec, ...], field: str) -> Callable | None:
        if self.source.image_mode:
            specs = tuple(tf.with_to_tensor(specs))
        return tf.build(specs, field) if specs else None


def prepare(
    source: SampleSource,
    transforms: Sequence[tf.Spec] = (),
    eval_transforms: Sequence[tf.Spec] = (),
) -> DataPipeline:
    """Validates the preprocessing against the first sample and returns the pipeline.

    Empty `eval_transforms` are derived from `transforms` (see `transforms.derive_eval`).

    Raises:
        InvalidArgument: a transform is malformed, fails on the data, or the training and
            evaluation transforms produce different shapes.
    """
    tf.build(transforms, "transforms")
    tf.build(eval_transforms, "eval_transforms")
    evaluation = tuple(eval_transforms) or tuple(tf.derive_eval(transforms))
    pipeline = DataPipeline(source, tuple(transforms), evaluation, source.info)
    if not (transforms or evaluation or source.image_mode):
        return pipeline  # tensors as stored: the source's shape holds
    shapes = {}
    for field, make in (("transforms", pipeline.train_set), ("eval_transforms", pipeline.eval_set)):
        dataset = make()
        if not len(dataset):  # type: ignore[arg-type]
            raise InvalidArgument.field("dataset", source.info.name, "holds no samples")
        try:
            sample = dataset[0][0]
        except Exception as err:  # a transform that does not fit the data
            raise InvalidArgument.field(
                field, list(getattr(pipeline, field)), f"fail on the first sample: {err}"
            ) from err
        shapes[field] = tuple(sample.shape)
    if shapes["transforms"] != shapes["eval_transforms"]:
        raise InvalidArgument.field(
            "eval_transforms",
            list(evaluation),
            f"give samples of shape {list(shapes['eval_transforms'])}, but the training "
            f"transforms give {list(shapes['transforms'])}",
        )
    return replace(pipeline, info=replace(source.info, feature_shape=shapes["eval_transforms"]))


def check_split(field: str, split: str) -> str:
    """Validates a split name and returns it."""
    if split not in SPLITS:
        raise InvalidArgument.field(field, split, f"must be one of {SPLITS}")
    return split


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
    validation subset is taken from it (None: from `dataset`).

    In-memory array data without transforms, loaded in-process (`num_workers` 0), takes the
    fast path: both subsets move to the device once and batches are sliced from there.
    Anything else goes through DataLoaders (pinned memory on CUDA). The same seed gives the
    same split and the same shuffling order. With a `shard` (distributed training), every
    rank holds out the same validation subset and trains on its own part of the rest.

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
        train = TensorBatches(
            features,
            targets,
            torch.tensor(train_set.indices),
            batch_size,
            shuffle,
            drop_last,
            generator,
            shard,
        )
        val = TensorBatches(features, targets, torch.tensor(val_set.indices), val_batch)
        return Loaders(train, val if n_val else None, n_train, n_val)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": num_workers > 0,
    }
    sampler: DistributedSampler | None = (
        DistributedSampler(train_set, shard.world_size, shard.rank, shuffle, seed=shard.seed)
        if shard is not None
        else None
    )
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
