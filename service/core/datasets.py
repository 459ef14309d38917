"""Where a dataset's data is: a split of a built-in dataset, or an uploaded split's raw
little-endian arrays, which a worker process opens without the registry."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchwire.service.core.data import BUILTIN_DATASETS, ArrayDataset, DatasetInfo
from torchwire.service.core.files import sha256_of
from torchwire.service.errors import FailedPrecondition

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
