"""What to train and how, in core terms: the hyperparameters (`TrainConfig`) and the whole
request (`TrainSpec`), validated on construction and turned into plain JSON-ready data."""

import math
from dataclasses import asdict, dataclass
from typing import Any

from torchwire.service.core.architectures import ARCHITECTURES
from torchwire.service.core.distributed import DistributedConfig
from torchwire.service.core.objectives import OBJECTIVES, Objective
from torchwire.service.core.sources import FileSource
from torchwire.service.core.transforms import Spec
from torchwire.service.errors import InvalidArgument

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULERS = ("constant", "step", "cosine", "one_cycle")
MONITORED = ("loss", "accuracy", "mae")


def _require(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise InvalidArgument.field(name, value, why)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; every field has a default. Invalid values raise `InvalidArgument`."""

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 0.01 for AdamW, 0 otherwise
    loss: str = "cross_entropy"
    val_fraction: float = 0.1
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = 0
    device: str = "auto"
    tensorboard: bool = False
    label_smoothing: float = 0.0
    nesterov: bool = False
    scheduler: str = "constant"
    step_size: int = 10
    gamma: float = 0.1
    grad_clip_norm: float = 0.0
    monitor: str = ""  # "": val_loss with validation, train_loss without
    amp: bool = True
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        # Resolved defaults are stored, so a recorded request shows what really ran.
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", 0.01 if self.optimizer == "adamw" else 0.0)
        if not self.scheduler:
            object.__setattr__(self, "scheduler", "constant")
        if not self.monitor:
            object.__setattr__(self, "monitor", "val_loss" if self.val_fraction else "train_loss")
        self._validate()

    def _validate(self) -> None:
        self._check_loop()
        self._check_optimizer()
        self._check_loss()
        self._check_schedule_and_stopping()

    def _check_loop(self) -> None:
        """Epochs, batches, the validation split, the seed and the loader workers."""
        _require(1 <= self.epochs <= 10_000, "config.epochs", self.epochs, "must be in [1, 10000]")
        _require(
            1 <= self.batch_size <= 65_536,
            "config.batch_size",
            self.batch_size,
            "must be in [1, 65536]",
        )
        _require(
            math.isfinite(self.val_fraction) and 0 <= self.val_fraction <= 0.9,
            "config.val_fraction",
            self.val_fraction,
            "must be in [0, 0.9]",
        )
        _require(0 <= self.seed < 2**63, "config.seed", self.seed, "must be in [0, 2**63)")
        _require(
            0 <= self.num_workers <= 16,
            "config.num_workers",
            self.num_workers,
            "must be in [0, 16]",
        )

    def _check_optimizer(self) -> None:
        """The optimizer and its settings, and gradient clipping."""
        _require(
            math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 10,
            "config.learning_rate",
            self.learning_rate,
            "must be in (0, 10]",
        )
        _require(
            self.optimizer in OPTIMIZERS,
            "config.optimizer",
            self.optimizer,
            f"must be one of {OPTIMIZERS}",
        )
        _require(
            math.isfinite(self.momentum) and 0 <= self.momentum < 1,
            "config.momentum",
            self.momentum,
            "must be in [0, 1)",
        )
        assert self.weight_decay is not None
        _require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "config.weight_decay",
            self.weight_decay,
            "must be >= 0",
        )
        _require(
            not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
            "config.nesterov",
            self.nesterov,
            "needs optimizer 'sgd' with momentum > 0",
        )
        _require(
            math.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0,
            "config.grad_clip_norm",
            self.grad_clip_norm,
            "must be >= 0 (0 turns clipping off)",
        )

    def _check_loss(self) -> None:
        """The loss and its label smoothing."""
        _require(
            self.loss in OBJECTIVES, "config.loss", self.loss, f"must be one of {tuple(OBJECTIVES)}"
        )
        _require(
            math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "config.label_smoothing",
            self.label_smoothing,
            "must be in [0, 1)",
        )
        _require(
            not self.label_smoothing or self.loss == "cross_entropy",
            "config.label_smoothing",
            self.label_smoothing,
            f"applies to the cross_entropy loss, not {self.loss!r}",
        )

    def _check_schedule_and_stopping(self) -> None:
        """The learning-rate schedule, early stopping and the monitored metric."""
        _require(
            0 <= self.patience <= 10_000, "config.patience", self.patience, "must be in [0, 10000]"
        )
        _require(
            math.isfinite(self.min_delta) and self.min_delta >= 0,
            "config.min_delta",
            self.min_delta,
            "must be >= 0",
        )
        _require(
            self.scheduler in SCHEDULERS,
            "config.scheduler",
            self.scheduler,
            f"must be one of {SCHEDULERS}",
        )
        _require(
            1 <= self.step_size <= 10_000,
            "config.step_size",
            self.step_size,
            "must be in [1, 10000]",
        )
        _require(
            math.isfinite(self.gamma) and 0 < self.gamma <= 1,
            "config.gamma",
            self.gamma,
            "must be in (0, 1]",
        )
        prefix, _, metric = self.monitor.partition("_")
        _require(
            prefix in ("train", "val") and metric in MONITORED,
            "config.monitor",
            self.monitor,
            f"must be val_ or train_ followed by one of {MONITORED}",
        )
        _require(
            prefix == "train" or self.val_fraction > 0,
            "config.monitor",
            self.monitor,
            "needs validation: val_fraction > 0",
        )

    @property
    def objective(self) -> Objective:
        """The loss and the task it trains."""
        return OBJECTIVES[self.loss]

    @property
    def task(self) -> str:
        """The task this loss trains: "classification" or "regression"."""
        return self.objective.task


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples of the frozen dataclasses."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


@dataclass(frozen=True)
class TrainSpec:
    """A whole training request in core terms: what to train, on what, and how.

    Attributes:
        dataset, split: a dataset by name (empty when `source` is given).
        source: files under a data root.
        transforms, eval_transforms: preprocessing specs (see `transforms`).
        init_from: (model, version) whose weights start the training (fine-tuning).
        distributed: DDP over several processes and machines; None trains in one process.
    """

    model_name: str
    dataset: str
    split: str
    architecture: str
    params: Any
    config: TrainConfig
    source: FileSource | None = None
    transforms: tuple[Spec, ...] = ()
    eval_transforms: tuple[Spec, ...] = ()
    init_from: tuple[str, int] | None = None
    distributed: DistributedConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; `from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSpec":
        """Inverse of `to_dict`."""
        params_type = ARCHITECTURES[data["architecture"]].params_type
        source = data.get("source")
        init_from = data.get("init_from")
        parallel = data.get("distributed")
        return cls(
            model_name=data["model_name"],
            dataset=data["dataset"],
            split=data["split"],
            architecture=data["architecture"],
            params=params_type(**_tuples(data["params"])),
            config=TrainConfig(**data["config"]),
            source=FileSource(**_tuples(source)) if source else None,
            transforms=tuple(data.get("transforms", ())),
            eval_transforms=tuple(data.get("eval_transforms", ())),
            init_from=(init_from[0], int(init_from[1])) if init_from else None,
            distributed=DistributedConfig(**parallel) if parallel else None,
        )
