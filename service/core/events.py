"""Structured job events: what the training loop and the job runner report, as plain dataclasses,
and how a training run ended (FitResult).

Field names match the `torchwire.v1` messages of the same meaning, so a payload
(`asdict` of an event) converts to its message without a hand-written mapping.
"""

from dataclasses import asdict, dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class EpochRecord:
    """Metrics after one epoch: one row of the learning curves."""

    epoch: int
    train_loss: float
    train_metrics: dict[str, float]
    samples_per_second: float
    seconds: float
    learning_rate: float
    val_loss: float | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    """How training ended."""

    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    cancelled: bool = False

    @property
    def best_metrics(self) -> dict[str, float]:
        """The metrics of the kept epoch; see `headline_metrics`."""
        return headline_metrics(self.history[self.best_epoch - 1]) if self.best_epoch else {}


def headline_metrics(record: EpochRecord) -> dict[str, float]:
    """Validation loss and metrics of an epoch, or its training ones without validation."""
    if record.val_loss is None:
        return {"loss": record.train_loss, **record.train_metrics}
    return {"loss": record.val_loss, **record.val_metrics}


@dataclass(frozen=True)
class Event:
    """Base of all events; `kind` names the event in the log and on the wire."""

    kind: ClassVar[str] = ""


@dataclass(frozen=True)
class Queued(Event):
    kind: ClassVar[str] = "queued"
    position: int


@dataclass(frozen=True)
class Started(Event):
    kind: ClassVar[str] = "started"
    device: str
    train_samples: int
    val_samples: int
    epochs: int
    steps_per_epoch: int
    start_epoch: int = 1
    warm_started_tensors: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class StepProgress(Event):
    kind: ClassVar[str] = "progress"
    epoch: int
    step: int
    steps_per_epoch: int
    loss: float


@dataclass(frozen=True)
class EpochEnd(Event):
    kind: ClassVar[str] = "epoch_end"
    metrics: EpochRecord
    eta_seconds: float
    epochs: int


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint_saved"
    epoch: int
    role: str  # "best" or "last"


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    model_name: str
    model_version: int
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    metrics: dict[str, float]


@dataclass(frozen=True)
class Failed(Event):
    kind: ClassVar[str] = "failed"
    reason: str


@dataclass(frozen=True)
class Cancelled(Event):
    kind: ClassVar[str] = "cancelled"
    reason: str


@dataclass(frozen=True)
class Interrupted(Event):
    kind: ClassVar[str] = "interrupted"
    reason: str
    checkpoint_epoch: int = 0


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def to_payload(event: Event | EpochRecord) -> dict:
    """The fields as a JSON-ready dict, unset optional fields left out."""
    return _drop_none(asdict(event))
