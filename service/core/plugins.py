"""Plugins: datasets and architectures that packages installed on the server register under
the `torchwire.datasets` and `torchwire.models` entry-point groups.

A request names a plugin; it never names code to import.
- A dataset plugin is a callable `load(split) -> Dataset` whose samples are
  `(features, target)`: a PIL image or a tensor, and a class id (the Dataset lists its
  `classes`) or float value(s). An unknown split raises KeyError.
- A model plugin is a callable `factory(input_shape, output_size, **options) -> nn.Module`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from torchwire.service.core.datasets import CLASSIFICATION, REGRESSION, DatasetInfo
from torchwire.service.errors import FailedPrecondition, NotFound

DATASETS, MODELS = "torchwire.datasets", "torchwire.models"


def names(group: str) -> list[str]:
    """The plugins installed in an entry-point group, by name."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load(group: str, name: str) -> Any:
    """The object a plugin registers.

    Raises:
        NotFound: no plugin of this name is installed.
        FailedPrecondition: the plugin is installed but fails to import.
    """
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        raise NotFound(f"no {group} plugin is named {name!r}; installed: {names(group)}")
    try:
        return found[0].load()
    except Exception as err:
        raise FailedPrecondition(f"{group} plugin {name!r} fails to load: {err}") from err


class _Transformed(Dataset):
    """A plugin's Dataset with a transform applied to each sample's features."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any] | None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.classes = list(getattr(dataset, "classes", []))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        features, target = self.dataset[index]
        if not isinstance(features, Image.Image):
            features = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        if self.transform is not None:
            features = self.transform(features)
        target = torch.as_tensor(np.asarray(target))
        if target.ndim == 0 and not (target.is_floating_point() or target.dtype == torch.bool):
            return features, target.to(torch.int64)  # a class id: int, NumPy or torch
        return features, target.to(torch.float32)


@dataclass(frozen=True)
class PluginSplit:
    """One split of a plugin dataset: picklable, opened again in the worker process."""

    name: str
    split: str
    info: DatasetInfo
    image_mode: str

    def open(self, transform: Callable[[Any], Any] | None = None) -> _Transformed:
        """The plugin's samples, with `transform` applied to the features."""
        try:
            dataset = load(DATASETS, self.name)(self.split)
        except KeyError as err:
            raise NotFound(f"dataset {self.name!r} has no {self.split!r} split") from err
        return _Transformed(dataset, transform)


def locate(name: str, split: str) -> PluginSplit:
    """Opens a plugin dataset's split and describes it from its first sample."""
    draft = PluginSplit(name, split, DatasetInfo(name, True, {}, (), "float32", (), (), ""), "")
    dataset = draft.open()
    if not len(dataset):
        raise FailedPrecondition(f"dataset plugin {name!r} split {split!r} holds no samples")
    features, target = dataset[0]
    image_mode = features.mode if isinstance(features, Image.Image) else ""
    shape = () if image_mode else tuple(features.shape)
    classification = target.dtype == torch.int64
    info = DatasetInfo(
        name=name,
        builtin=True,
        splits={split: len(dataset)},
        feature_shape=shape,
        feature_dtype="float32",
        target_shape=() if classification else tuple(target.shape),
        classes=tuple(dataset.classes) if classification else (),
        task=CLASSIFICATION if classification else REGRESSION,
    )
    if classification and not info.classes:
        raise FailedPrecondition(f"dataset plugin {name!r} has class ids but no `classes`")
    return PluginSplit(name, split, info, image_mode)
