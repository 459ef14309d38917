"""What the store records, as typed values: jobs, their events, and model versions with the
metadata that serving needs. Built once where a row is read; the rest of the path trusts them."""

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from torchwire.service.core.architectures import ModelConfig, Params
from torchwire.service.core.objectives import Objective, default_objective
from torchwire.service.core.spec import TrainSpec
from torchwire.service.errors import InvalidArgument

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(field: str, value: str) -> str:
    """Validates a model or dataset name, so that no name can reach outside the store.

    Raises:
        InvalidArgument: the name is empty, too long, or has characters outside [A-Za-z0-9._-].
    """
    if not _NAME.fullmatch(value) or ".." in value:
        raise InvalidArgument.field(
            field,
            value,
            "must be 1-64 characters of [A-Za-z0-9._-], "
            "starting with a letter or digit, without '..'",
        )
    return value


@dataclass(frozen=True)
class JobRecord:
    """A training job as recorded: its validated spec, its state and its outcome."""

    id: str
    model_name: str
    state: str
    spec: TrainSpec
    created_at: float
    started_at: float | None
    finished_at: float | None
    device: str
    error: str
    model_version: int
    best_epoch: int


@dataclass(frozen=True)
class EventRecord:
    """One entry of a job's event log."""

    job_id: str
    seq: int
    time: float
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ImportedFile:
    """Where an imported version came from: the file as uploaded and, for a state_dict, the
    model config (`ModelConfig.to_dict()`) its weights were loaded into."""

    format: str
    file_name: str
    sha256: str
    size_bytes: int
    model_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class VersionMetadata:
    """What a registered version is: its input and output, the training (or the import) that
    made it, and how to preprocess images for it. Built once when the version is registered.

    Attributes:
        task: "classification" or "regression".
        input_shape: one sample's shape (C, H, W for images).
        input_dtype: the NumPy dtype name of inputs.
        output_size: the model's outputs per sample.
        classes: class names (classification).
        training: the job's spec, enough to rebuild the module and its loss; None for an
            imported version.
        metrics: the best epoch's headline metrics.
        best_epoch: the epoch whose weights were kept.
        history: the per-epoch learning curve, as payload dicts.
        eval_transforms: the evaluation transforms, as one-key dicts.
        image_mode: the PIL mode images are decoded to; "" for tensor models.
        checkpoint_sha256: the checkpoint's checksum, set by the store on registration; empty
            for a version without a checkpoint (an ONNX or TorchScript import).
        imported: the file an imported version came from; None for a trained one.
    """

    task: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_size: int
    classes: tuple[str, ...]
    training: TrainSpec | None
    metrics: dict[str, float]
    best_epoch: int
    history: tuple[dict[str, Any], ...]
    eval_transforms: tuple[dict[str, Any], ...] = ()
    image_mode: str = ""
    checkpoint_sha256: str = ""
    imported: ImportedFile | None = None

    def architecture(self) -> tuple[str, Params] | None:
        """The architecture and parameters that rebuild the version's module; None for a
        version that has no module (an ONNX or TorchScript import)."""
        if self.training is not None:
            return self.training.architecture, self.training.params
        if self.imported is not None and self.imported.model_config is not None:
            config = ModelConfig.from_dict(self.imported.model_config)
            return config.architecture, config.params
        return None

    @property
    def objective(self) -> Objective:
        """The loss it was trained with; for an import, the task's usual one."""
        if self.training is not None:
            return self.training.config.objective
        return default_objective(self.task, self.output_size)

    def label_smoothing(self) -> float:
        """The label smoothing of its loss (0 but for a trained cross_entropy)."""
        return self.training.config.label_smoothing if self.training is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the registry."""
        training = self.training.to_dict() if self.training is not None else None
        return {**asdict(self), "training": training}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VersionMetadata":
        """From the registry's JSON."""
        return cls(
            task=data["task"],
            input_shape=tuple(data["input_shape"]),
            input_dtype=data["input_dtype"],
            output_size=data["output_size"],
            classes=tuple(data["classes"]),
            training=TrainSpec.from_dict(data["training"]) if data["training"] else None,
            metrics=dict(data["metrics"]),
            best_epoch=data["best_epoch"],
            history=tuple(data["history"]),
            eval_transforms=tuple(data.get("eval_transforms", ())),
            image_mode=data.get("image_mode", ""),
            checkpoint_sha256=data.get("checkpoint_sha256", ""),
            imported=ImportedFile(**data["imported"]) if data.get("imported") else None,
        )


@dataclass(frozen=True)
class ModelVersionRecord:
    """A registered model version: its checkpoint (relative to the store root; empty for a
    version without one) and its metadata."""

    name: str
    version: int
    created_at: float
    job_id: str
    checkpoint: str
    metadata: VersionMetadata = field(repr=False)
