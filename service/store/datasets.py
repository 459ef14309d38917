"""The dataset catalog: built-in datasets, plugins, files under the data roots, and uploaded
datasets stored as raw little-endian arrays."""

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from torchwire.service.core import plugins
from torchwire.service.core.datasets import (
    BUILTIN_DATASETS,
    CLASSIFICATION,
    FEATURES_FILE,
    REGRESSION,
    TARGETS_FILE,
    DatasetInfo,
    DatasetLocation,
    check_split,
)
from torchwire.service.core.files import atomic_directory
from torchwire.service.core.pipeline import SampleSource
from torchwire.service.core.precision import as_float32
from torchwire.service.core.records import check_name
from torchwire.service.core.sources import FileSource, locate_files
from torchwire.service.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    shown,
)
from torchwire.service.store.registry import Registry

log = logging.getLogger(__name__)

_FEATURE_DTYPES = {np.dtype("float32"), np.dtype("float64")}
_CLASS_DTYPES = {np.dtype("int64"), np.dtype("int32")}


def _chunk_task(where: str, features: np.ndarray, targets: np.ndarray) -> str:
    """The task a chunk's targets imply, after checking its dtypes and shapes on their own."""
    if features.dtype not in _FEATURE_DTYPES:
        raise InvalidArgument.field(
            f"{where}.features.dtype", str(features.dtype), "must be float32 or float64"
        )
    if features.ndim < 2 or features.shape[0] < 1:
        raise InvalidArgument.field(
            f"{where}.features.shape",
            list(features.shape),
            "must be [n, ...] with n >= 1 and per-sample dimensions",
        )
    if targets.ndim not in (1, 2) or len(targets) != len(features):
        raise InvalidArgument.field(
            f"{where}.targets.shape",
            list(targets.shape),
            f"must be [{len(features)}] or [{len(features)}, k]",
        )
    if targets.dtype in _CLASS_DTYPES:
        task = CLASSIFICATION
        if targets.ndim != 1:
            raise InvalidArgument.field(
                f"{where}.targets.shape",
                list(targets.shape),
                "class ids must be one per sample: [n]",
            )
        if targets.min() < 0:
            raise InvalidArgument.field(
                f"{where}.targets", int(targets.min()), "class ids must be >= 0"
            )
    elif targets.dtype in _FEATURE_DTYPES:
        task = REGRESSION
        if not np.isfinite(targets).all():
            raise InvalidArgument.field(f"{where}.targets", "nan/inf", "must be finite")
    else:
        raise InvalidArgument.field(
            f"{where}.targets.dtype",
            str(targets.dtype),
            "must be int64/int32 (classes) or float32/float64 (values)",
        )
    return task


class _SplitWriter:
    """Appends validated chunks of one upload to raw files in a scratch directory."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.count = 0
        self.written = 0
        self.feature_shape: tuple[int, ...] | None = None
        self.target_shape: tuple[int, ...] = ()
        self.task = ""
        self.max_class = -1
        self.digests = (hashlib.sha256(), hashlib.sha256())
        self._features: BinaryIO = open(directory / FEATURES_FILE, "wb")  # noqa: SIM115
        self._targets: BinaryIO = open(directory / TARGETS_FILE, "wb")  # noqa: SIM115

    def add(self, index: int, features: np.ndarray, targets: np.ndarray) -> None:
        """Checks a chunk against the upload so far, then appends it to both files."""
        where = f"chunk[{index}]"
        task = _chunk_task(where, features, targets)
        sample_shape = tuple(features.shape[1:])
        if self.feature_shape is None:
            self.feature_shape, self.target_shape, self.task = (
                sample_shape,
                tuple(targets.shape[1:]),
                task,
            )
        elif sample_shape != self.feature_shape:
            raise InvalidArgument.field(
                f"{where}.features.shape",
                list(features.shape),
                f"per-sample shape differs from the first chunk's {list(self.feature_shape)}",
            )
        elif task != self.task or tuple(targets.shape[1:]) != self.target_shape:
            raise InvalidArgument.field(
                f"{where}.targets",
                f"{targets.dtype}{list(targets.shape)}",
                "differs in dtype or shape from the first chunk's targets",
            )
        features = as_float32(features, f"{where}.features").astype("<f4", copy=False)
        if task == CLASSIFICATION:
            targets = targets.astype("<i8", copy=False)
        else:
            targets = as_float32(targets, f"{where}.targets").astype("<f4", copy=False)
        size = features.nbytes + targets.nbytes
        if self.written + size > self.max_bytes:
            raise ResourceExhausted(f"upload exceeds max_upload_bytes={self.max_bytes}")
        for fh, digest, array in zip(
            (self._features, self._targets), self.digests, (features, targets), strict=True
        ):
            data = np.ascontiguousarray(array).tobytes()
            fh.write(data)
            digest.update(data)
        self.written += size
        self.count += len(features)
        if task == CLASSIFICATION:
            self.max_class = max(self.max_class, int(targets.max()))

    def close(self) -> None:
        """Closes both files (the upload's `atomic_directory` flushes them to disk)."""
        for fh in (self._features, self._targets):
            fh.close()


class DatasetCatalog:
    """Resolves dataset references to data: built-ins, plugins, then uploads under `root`;
    or files under the data roots.

    Args:
        root: where uploads are stored.
        registry: where uploads are recorded.
        max_upload_bytes: the largest upload.
        data_roots: the folders file sources may read from.
        allow_download: whether torchvision datasets may be downloaded into a data root.
    """

    def __init__(
        self,
        root: Path,
        registry: Registry,
        max_upload_bytes: int,
        data_roots: Sequence[Path] = (),
        allow_download: bool = False,
    ) -> None:
        self.root = root
        self.registry = registry
        self.max_upload_bytes = max_upload_bytes
        self.data_roots = tuple(data_roots)
        self.allow_download = allow_download
        root.mkdir(parents=True, exist_ok=True)

    def all(self) -> list[DatasetInfo]:
        """Every named dataset: built-ins, plugins, then uploads by name."""
        uploaded = self.registry.dataset_splits()
        return (
            [b.info for b in BUILTIN_DATASETS.values()]
            + [info for name in plugins.names(plugins.DATASETS) if (info := _plugin_info(name))]
            + [_info(name, splits) for name, splits in uploaded.items()]
        )

    def info(self, name: str, field: str = "dataset.name") -> DatasetInfo:
        """The description of an uploaded or built-in dataset.

        Raises:
            NotFound: no dataset has this name.
        """
        if name in BUILTIN_DATASETS:
            return BUILTIN_DATASETS[name].info
        check_name(field, name)
        splits = self.registry.dataset_splits(name).get(name)
        if not splits:
            raise NotFound(f"dataset {shown(name)} does not exist")
        return _info(name, splits)

    def locate(
        self, name: str, split: str, source: FileSource | None = None, field: str = "dataset"
    ) -> SampleSource:
        """Finds one split of a dataset, or the files of a source.

        Raises:
            InvalidArgument: the name, split or source is malformed, or the source's path
                leaves the data roots.
            NotFound: the dataset, the split or the path does not exist.
        """
        check_split(f"{field}.split", split)
        if source is not None:
            if name:
                raise InvalidArgument.field(
                    f"{field}.name", name, "give a name or a source, not both"
                )
            return locate_files(source, split, self.data_roots, self.allow_download)
        if name in plugins.names(plugins.DATASETS):
            return plugins.locate(name, split)
        info = self.info(name, f"{field}.name")
        if split not in info.splits:
            raise NotFound(
                f"dataset {shown(name)} has no {shown(split)} split; it has {sorted(info.splits)}"
            )
        if info.builtin:
            return DatasetLocation(info, split, None)
        meta = self.registry.dataset_splits(name)[name][split]
        return DatasetLocation(
            info,
            split,
            self.root / name / split,
            meta["target_dtype"],
            (meta["features_sha256"], meta["targets_sha256"]),
        )

    def upload(
        self,
        name: str,
        split: str,
        classes: list[str],
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    ) -> DatasetInfo:
        """Stores an uploaded split atomically: it appears whole or not at all.

        Args:
            name: the dataset's name.
            split: "train" or "test".
            classes: class names (optional; classification only).
            chunks: (features, targets) arrays, validated one by one as they arrive.
        """
        check_name("header.name", name)
        if name in BUILTIN_DATASETS or name in plugins.names(plugins.DATASETS):
            raise InvalidArgument.field(
                "header.name", name, "is the name of a built-in or plugin dataset"
            )
        check_split("header.split", split)
        if len(classes) != len(set(classes)) or any(not c for c in classes):
            raise InvalidArgument.field("header.classes", classes, "must be unique and non-empty")
        with atomic_directory(self.root / name / split, self.root, ".upload-") as scratch:
            writer = _SplitWriter(scratch, self.max_upload_bytes)
            try:
                for index, (features, targets) in enumerate(chunks):
                    writer.add(index, features, targets)
            finally:
                writer.close()
            meta = self._check_upload(name, split, classes, writer)
        self.registry.put_dataset_split(name, split, meta)
        return self.info(name)

    def _check_upload(
        self, name: str, split: str, classes: list[str], writer: _SplitWriter
    ) -> dict[str, Any]:
        if writer.count == 0 or writer.feature_shape is None:
            raise InvalidArgument.field("chunk", 0, "the upload holds no samples")
        if writer.task == CLASSIFICATION:
            if classes and writer.max_class >= len(classes):
                raise InvalidArgument.field(
                    "header.classes",
                    classes,
                    f"has {len(classes)} names but targets reach class {writer.max_class}",
                )
            classes = classes or [str(c) for c in range(writer.max_class + 1)]
        elif classes:
            raise InvalidArgument.field(
                "header.classes", classes, "only classification targets (int64) take class names"
            )
        meta = {
            "num_samples": writer.count,
            "feature_shape": list(writer.feature_shape),
            "target_shape": list(writer.target_shape),
            "target_dtype": "<i8" if writer.task == CLASSIFICATION else "<f4",
            "classes": classes,
            "task": writer.task,
            "features_sha256": writer.digests[0].hexdigest(),
            "targets_sha256": writer.digests[1].hexdigest(),
        }
        others = {
            s: m for s, m in self.registry.dataset_splits(name).get(name, {}).items() if s != split
        }
        for other_split, other in others.items():
            for key in ("feature_shape", "target_shape", "task"):
                if other[key] != meta[key]:
                    raise InvalidArgument.field(
                        f"chunk.{key}",
                        meta[key],
                        f"differs from the {other_split!r} split's {other[key]}",
                    )
        return meta


def _plugin_info(name: str) -> DatasetInfo | None:
    """A plugin dataset's description over the splits it has; None when it fails to load."""
    infos = []
    for split in ("train", "test"):
        try:
            infos.append(plugins.locate(name, split).info)
        except NotFound:
            continue
        except Exception:
            log.exception("dataset plugin %r fails to describe its %s split", name, split)
    if not infos:
        return None
    return replace(infos[0], splits={s: n for info in infos for s, n in info.splits.items()})


def _info(name: str, splits: dict[str, dict[str, Any]]) -> DatasetInfo:
    """A dataset's description from its uploaded splits' metadata."""
    first = next(iter(splits.values()))
    classes = max((m["classes"] for m in splits.values()), key=len)
    return DatasetInfo(
        name=name,
        builtin=False,
        splits={s: m["num_samples"] for s, m in splits.items()},
        feature_shape=tuple(first["feature_shape"]),
        feature_dtype="float32",
        target_shape=tuple(first["target_shape"]),
        classes=tuple(classes),
        task=first["task"],
    )
