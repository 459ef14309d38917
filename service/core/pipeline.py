"""The preprocessing pipeline of a request: a sample source with its training and evaluation
transforms, checked against the first sample."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from torch.utils.data import Dataset

from torchwire.service.core import transforms as tf
from torchwire.service.core.datasets import DatasetInfo
from torchwire.service.errors import InvalidArgument


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
