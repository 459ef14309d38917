"""Datasets: what a dataset holds (DatasetInfo), array-backed Datasets, the built-in digits, and
where a split's data is (DatasetLocation: a built-in, or an uploaded split's raw arrays)."""

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from torchwire.service.core.files import sha256_of
from torchwire.service.errors import FailedPrecondition, InvalidArgument

# Uploaded datasets are read-only memory maps, and training only reads them: torch's warning
# that a tensor made from one is not writable is noise in every job's log.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

CLASSIFICATION = "classification"
REGRESSION = "regression"
SPLITS = ("train", "test")


def check_split(field: str, split: str) -> str:
    """Validates a split name and returns it."""
    if split not in SPLITS:
        raise InvalidArgument.field(field, split, f"must be one of {SPLITS}")
    return split


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


FEATURES_FILE, TARGETS_FILE = "features.bin", "targets.bin"


@dataclass(frozen=True)
class DatasetLocation:
    """Where one split lives: picklable, so a worker process can open it without the registry."""

    info: DatasetInfo
    split: str
    directory: Path | None  # None for built-ins
    target_dtype: str = ""
    sha256: tuple[str, str] = ("", "")  # of the features and targets files
    image_mode: str = ""  # stored samples are tensors

    def open(self, transform: Callable[[Any], Any] | None = None) -> ArrayDataset:
        """Loads the split as a Dataset (uploaded splits are memory-mapped, not read whole),
        after checking its files against the sha256 recorded at upload.

        Raises:
            FailedPrecondition: a file is missing or has changed since the upload.
        """
        if self.directory is None:
            features, targets = BUILTIN_DATASETS[self.info.name].load(self.split)
        else:
            for name, expected in zip((FEATURES_FILE, TARGETS_FILE), self.sha256, strict=True):
                path = self.directory / name
                if not path.exists() or sha256_of(path) != expected:
                    raise FailedPrecondition(
                        f"dataset {self.info.name!r} split {self.split!r} is missing or corrupt "
                        f"({name}: sha256 mismatch); upload it again"
                    )
            count = self.info.splits[self.split]
            features = np.memmap(
                self.directory / FEATURES_FILE,
                dtype="<f4",
                mode="r",
                shape=(count, *self.info.feature_shape),
            )
            targets = np.memmap(
                self.directory / TARGETS_FILE,
                dtype=self.target_dtype,
                mode="r",
                shape=(count, *self.info.target_shape),
            )
        return ArrayDataset(features, targets, self.info.task, transform, self.info.classes)
