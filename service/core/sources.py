"""Datasets read from files under the server's data roots: torchvision's MNIST, FashionMNIST
and CIFAR10, image folders, images labelled by file name, and CSV tables."""

import csv
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from torchwire.service.core.datasets import CLASSIFICATION, REGRESSION, ArrayDataset, DatasetInfo
from torchwire.service.errors import FailedPrecondition, InvalidArgument, NotFound, shown

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_LABEL_PATTERN = r"^(.+)_[^_]*$"
MAX_PATTERN_LENGTH = 256
TORCHVISION_FORMATS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
FORMATS = (*TORCHVISION_FORMATS, "image_folder", "image_files", "csv")
Transform = Callable[[Any], Any] | None


@dataclass(frozen=True)
class FileSource:
    """What a request asks to read: the reader, the path, and the reader's options."""

    format: str
    path: str
    label_pattern: str = ""
    target_columns: tuple[str, ...] = ()
    feature_columns: tuple[str, ...] = ()
    task: str = ""


def resolve_path(path: str, roots: Sequence[Path], field: str) -> Path:
    """The real path of `path` (relative to a data root, or absolute), inside a data root.

    Symbolic links and `..` are resolved before the check, so neither escapes a root. A
    relative path is looked up in every root: where it exists (a link that exists counts,
    wherever it points), its target must be inside a root.

    Raises:
        InvalidArgument: the path is empty or unusable, or resolves outside every data root.
        NotFound: it is inside a root but does not exist.
    """
    if not path:
        raise InvalidArgument.field(field, path, "is required")
    if "\0" in path or len(path) > 4096:
        raise InvalidArgument.field(field, path, "is not a usable path (a NUL byte, or too long)")
    candidates = [Path(path)] if Path(path).is_absolute() else [root / path for root in roots]
    real_roots = [root.resolve() for root in roots]
    resolved = []
    for candidate in candidates:
        try:
            real = candidate.resolve()
            real.exists()  # raises for a name too long for the file system
        except OSError as err:  # a name too long for the file system
            raise InvalidArgument.field(
                field, path, f"is not a usable path: {err.strerror}"
            ) from err
        resolved.append((os.path.lexists(candidate), real))
    present = [real for there, real in resolved if there]
    inside = [
        real
        for real in present or [real for _, real in resolved]
        if any(real.is_relative_to(root) for root in real_roots)
    ]
    if len(inside) < len(present) or not inside:
        raise InvalidArgument.field(
            field, path, f"resolves outside the server's data roots {[str(r) for r in roots]}"
        )
    existing = [real for real in inside if real.exists()]
    if not existing:
        raise NotFound(f"{field}={shown(path)} does not exist under the data roots")
    return existing[0]


class ImageSamples(Dataset):
    """Images on disk with their class ids, decoded lazily to one color mode."""

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], mode: str, transform: Transform
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            sample = image.convert(self.mode)
        return (self.transform(sample) if self.transform else sample), label


def _images_in(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _image_folder(directory: Path, field: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """One sub-folder per class, classes sorted by name (torchvision's ImageFolder layout)."""
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and _images_in(p))
    if not classes:
        raise InvalidArgument.field(
            field, str(directory), "holds no sub-folder with PNG or JPEG images"
        )
    samples = [
        (image, index)
        for index, name in enumerate(classes)
        for image in _images_in(directory / name)
    ]
    return samples, classes


def _image_files(
    directory: Path, pattern: str, field: str
) -> tuple[list[tuple[Path, int]], list[str]]:
    """Images in one folder, labelled by the first group of `pattern` in their stem."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidArgument.field(
            "dataset.source.label_pattern", pattern, f"is longer than {MAX_PATTERN_LENGTH}"
        )
    try:
        regex = re.compile(pattern or DEFAULT_LABEL_PATTERN)
    except re.error as err:
        raise InvalidArgument.field(
            "dataset.source.label_pattern", pattern, f"is not a regular expression: {err}"
        ) from err
    if regex.groups < 1:
        raise InvalidArgument.field(
            "dataset.source.label_pattern", pattern, "needs a group that captures the label"
        )
    labelled = []
    for image in _images_in(directory):
        match = regex.search(image.stem)
        if match is None or not match.group(1):
            raise InvalidArgument.field(
                "dataset.source.label_pattern",
                pattern or DEFAULT_LABEL_PATTERN,
                f"finds no label in {image.stem!r}, the name of {image.name!r} without its "
                "extension",
            )
        labelled.append((image, match.group(1)))
    if not labelled:
        raise InvalidArgument.field(field, str(directory), "holds no PNG or JPEG image")
    classes = sorted({label for _, label in labelled})
    index = {name: i for i, name in enumerate(classes)}
    return [(image, index[label]) for image, label in labelled], classes


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _feature_matrix(body: list[list[str]], indices: list[int], names: list[str]) -> np.ndarray:
    """The feature cells of every row as float32; each must be a finite number."""
    x = np.empty((len(body), len(indices)), dtype=np.float32)
    for line, row in enumerate(body, start=2):
        for j, (column, name) in enumerate(zip(indices, names, strict=True)):
            value = _number(row[column])
            if value is None or not np.isfinite(value):
                raise InvalidArgument.field(
                    f"dataset.source.feature_columns[{name!r}]",
                    f"{row[column]!r} on line {line}",
                    "must be a finite number",
                )
            x[line - 2, j] = value
    return x


def _read_csv(path: Path, source: FileSource) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Features, targets, class names and task of a CSV table with a header row."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise InvalidArgument.field("dataset.source.path", str(path), "needs a header and rows")
    header, body = rows[0], rows[1:]
    for column in (*source.target_columns, *source.feature_columns):
        if column not in header:
            raise InvalidArgument.field(
                "dataset.source", column, f"is not a column; the header has {header}"
            )
    targets = list(source.target_columns) or [header[-1]]
    features = list(source.feature_columns) or [c for c in header if c not in targets]
    if not features:
        raise InvalidArgument.field("dataset.source.feature_columns", features, "is empty")
    columns = {name: i for i, name in enumerate(header)}
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InvalidArgument.field(
                "dataset.source.path",
                f"{path.name}:{line}",
                f"has {len(row)} of {len(header)} cells",
            )
    raw_targets = [[row[columns[c]] for c in targets] for row in body]
    numeric = all(_number(v) is not None for r in raw_targets for v in r)
    task = source.task or (REGRESSION if numeric else CLASSIFICATION)
    if task not in (CLASSIFICATION, REGRESSION):
        raise InvalidArgument.field(
            "dataset.source.task", task, "must be 'classification' or 'regression'"
        )
    x = _feature_matrix(body, [columns[name] for name in features], features)
    if task == REGRESSION:
        if not numeric:
            raise InvalidArgument.field(
                "dataset.source.task", task, f"needs numeric targets in {targets}"
            )
        y = np.array(raw_targets, dtype=np.float32)
        if not np.isfinite(y).all():
            raise InvalidArgument.field(
                f"dataset.source.target_columns{targets}", "nan/inf", "must be finite"
            )
        return x, (y[:, 0] if len(targets) == 1 else y), [], task
    if len(targets) != 1:
        raise InvalidArgument.field(
            "dataset.source.target_columns", targets, "classification takes one target column"
        )
    labels = [r[0] for r in raw_targets]
    classes = sorted(set(labels), key=lambda v: (_number(v) is None, _number(v) or 0, v))
    index = {name: i for i, name in enumerate(classes)}
    return x, np.array([index[v] for v in labels], dtype=np.int64), classes, task


def _torchvision(
    format: str, root: Path, split: str, allow_download: bool, transform: Transform
) -> Dataset:
    from torchvision import datasets

    cls = getattr(datasets, TORCHVISION_FORMATS[format])
    try:
        return cls(str(root), train=split == "train", transform=transform, download=allow_download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        hint = "" if allow_download else "; this server does not download (--allow-download)"
        raise FailedPrecondition(
            f"dataset.source: no {TORCHVISION_FORMATS[format]} files under {str(root)!r} "
            f"({err}){hint}"
        ) from err


@dataclass(frozen=True)
class FileSplit:
    """A file source resolved on the server: picklable, so a worker process can open it."""

    source: FileSource
    directory: Path
    split: str
    allow_download: bool
    info: DatasetInfo
    image_mode: str

    def open(self, transform: Transform = None) -> Dataset:
        """The samples as a Dataset; `transform` applies to each sample's features."""
        fmt = self.source.format
        if fmt in TORCHVISION_FORMATS:
            return _torchvision(fmt, self.directory, self.split, self.allow_download, transform)
        if fmt == "csv":
            x, y, classes, task = _read_csv(self.directory, self.source)
            return ArrayDataset(x, y, task, transform, classes)
        field = "dataset.source.path"
        if fmt == "image_folder":
            samples, classes = _image_folder(self.directory, field)
        else:
            samples, classes = _image_files(self.directory, self.source.label_pattern, field)
        return ImageSamples(samples, classes, self.image_mode, transform)


def locate_files(
    source: FileSource, split: str, roots: Sequence[Path], allow_download: bool
) -> FileSplit:
    """Resolves a file source and reads enough of it to describe it.

    Raises:
        InvalidArgument: unknown format, path outside the data roots, unreadable content.
        NotFound: the path does not exist.
        FailedPrecondition: torchvision's files are missing and downloads are off.
    """
    if source.format not in FORMATS:
        raise InvalidArgument.field(
            "dataset.source.format", source.format, f"must be one of {FORMATS}"
        )
    field = "dataset.source.path"
    path = resolve_path(source.path, roots, field)
    if (source.format == "csv") == path.is_dir():
        kind = "a CSV file" if source.format == "csv" else "a folder"
        raise InvalidArgument.field(field, source.path, f"must be {kind} for {source.format}")
    image_mode = "L" if source.format in ("mnist", "fashion_mnist") else "RGB"
    if source.format == "csv":
        image_mode = ""
    draft = FileSplit(source, path, split, allow_download, _placeholder(source), image_mode)
    try:
        dataset = draft.open()
    except (OSError, UnicodeDecodeError, csv.Error) as err:  # unreadable, not UTF-8, not CSV
        raise InvalidArgument.field(field, source.path, f"cannot be read: {err}") from err
    classes = list(getattr(dataset, "classes", []))
    if isinstance(dataset, ArrayDataset):
        task = CLASSIFICATION if dataset.target_dtype == torch.int64 else REGRESSION
        feature_shape = tuple(dataset.features.shape[1:])
        target_shape = tuple(dataset.targets.shape[1:])
    else:
        task, feature_shape, target_shape = CLASSIFICATION, (), ()
    info = DatasetInfo(
        name=f"{source.format}:{source.path}",
        builtin=False,
        splits={split: len(dataset)},  # type: ignore[arg-type]
        feature_shape=feature_shape,
        feature_dtype="float32",
        target_shape=target_shape,
        classes=tuple(str(c) for c in classes),
        task=task,
    )
    return FileSplit(source, path, split, allow_download, info, image_mode)


def _placeholder(source: FileSource) -> DatasetInfo:
    return DatasetInfo(source.path, False, {}, (), "float32", (), (), CLASSIFICATION)
