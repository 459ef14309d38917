"""The training loop: zero_grad, forward, loss, backward, step over epochs, with validation,
early stopping, best and last checkpoints, and per-epoch learning curves."""

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from torchwire.service.core import events
from torchwire.service.core.checkpoint import load_checkpoint, save_checkpoint
from torchwire.service.core.data import (
    CLASSIFICATION,
    REGRESSION,
    DatasetInfo,
    split_and_load,
    split_sizes,
)
from torchwire.service.core.device import choose_device
from torchwire.service.core.evaluation import align_output, evaluate
from torchwire.service.core.models import ARCHITECTURES, ModelConfig
from torchwire.service.core.tensorboard import TensorBoardLog
from torchwire.service.errors import InvalidArgument

#: Loss name -> (constructor, the task it trains).
LOSSES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "cross_entropy": (nn.CrossEntropyLoss, CLASSIFICATION),
    "mse": (nn.MSELoss, REGRESSION),
}
OPTIMIZERS = ("adam", "sgd")
PROGRESS_INTERVAL_S = 0.5
FUSED_DEVICES = ("cpu", "cuda")


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
    weight_decay: float = 0.0
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

    def __post_init__(self) -> None:
        _require(1 <= self.epochs <= 10_000, "config.epochs", self.epochs, "must be in [1, 10000]")
        _require(
            1 <= self.batch_size <= 65_536,
            "config.batch_size",
            self.batch_size,
            "must be in [1, 65536]",
        )
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
        _require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "config.weight_decay",
            self.weight_decay,
            "must be >= 0",
        )
        _require(self.loss in LOSSES, "config.loss", self.loss, f"must be one of {tuple(LOSSES)}")
        _require(
            math.isfinite(self.val_fraction) and 0 <= self.val_fraction <= 0.9,
            "config.val_fraction",
            self.val_fraction,
            "must be in [0, 0.9]",
        )
        _require(
            0 <= self.patience <= 10_000, "config.patience", self.patience, "must be in [0, 10000]"
        )
        _require(
            math.isfinite(self.min_delta) and self.min_delta >= 0,
            "config.min_delta",
            self.min_delta,
            "must be >= 0",
        )
        _require(0 <= self.seed < 2**63, "config.seed", self.seed, "must be in [0, 2**63)")
        _require(
            0 <= self.num_workers <= 16,
            "config.num_workers",
            self.num_workers,
            "must be in [0, 16]",
        )

    @property
    def task(self) -> str:
        """The task this loss trains: "classification" or "regression"."""
        return LOSSES[self.loss][1]


@dataclass(frozen=True)
class TrainSpec:
    """A whole training request in core terms: what to train, on what, and how."""

    model_name: str
    dataset: str
    split: str
    architecture: str
    params: Any
    config: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; `from_dict` inverts it."""
        data = asdict(self)
        data["params"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.params).items()
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSpec":
        """Inverse of `to_dict`."""
        params_type = ARCHITECTURES[data["architecture"]].params_type
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in data["params"].items()}
        return cls(
            model_name=data["model_name"],
            dataset=data["dataset"],
            split=data["split"],
            architecture=data["architecture"],
            params=params_type(**params),
            config=TrainConfig(**data["config"]),
        )


@dataclass
class FitResult:
    """How training ended."""

    history: list[events.EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    cancelled: bool = False

    @property
    def best_metrics(self) -> dict[str, float]:
        """The metrics of the kept epoch; see `headline_metrics`."""
        return headline_metrics(self.history[self.best_epoch - 1]) if self.best_epoch else {}


def headline_metrics(record: events.EpochRecord) -> dict[str, float]:
    """Validation loss and metrics of an epoch, or its training ones without validation."""
    if record.val_loss is None:
        return {"loss": record.train_loss, **record.train_metrics}
    return {"loss": record.val_loss, **record.val_metrics}


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices) so that CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    # The fused kernels do the whole update in one pass: about a quarter less time per step
    # for small models on the CPU (BENCHMARKS.md), and the usual choice on CUDA.
    fused = device.type in FUSED_DEVICES
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            fused=fused,
        )
    return torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused
    )


def check_compatible(spec: TrainSpec, info: DatasetInfo) -> ModelConfig:
    """Checks the loss and the batching against the data; returns the model config for it."""
    config = spec.config
    if config.task != info.task:
        raise InvalidArgument.field(
            "config.loss",
            config.loss,
            f"trains {config.task}, but dataset {info.name!r} is {info.task}",
        )
    split_sizes(info.splits[spec.split], config.val_fraction, config.batch_size, config.drop_last)
    return ModelConfig(spec.architecture, spec.params, info.feature_shape, info.output_size)


class _Improvement:
    """Early stopping's bookkeeping: the best monitored loss and the epochs since it improved."""

    def __init__(self, min_delta: float) -> None:
        self.min_delta = min_delta
        self.best = math.inf
        self.bad_epochs = 0

    def improved(self, record: events.EpochRecord) -> bool:
        """Takes an epoch's record; True when it beats the best by more than `min_delta`."""
        monitored = record.val_loss if record.val_loss is not None else record.train_loss
        if monitored < self.best - self.min_delta:
            self.best, self.bad_epochs = monitored, 0
            return True
        self.bad_epochs += 1
        return False


class Trainer:
    """Runs one training: the classic PyTorch loop, reporting through `emit`.

    Args:
        spec: what to train and how.
        info: the dataset's description (shapes, classes, task).
        dataset: the training split as a map-style Dataset.
        checkpoint_dir: where `best.pt` and `last.pt` go.
        emit: receives every event (started, progress, epoch end, checkpoint saved).
        should_stop: polled before every batch; True cancels the run after that batch.
        resume_from: a `last.pt` to continue from (model, optimizer, learning curve).
    """

    def __init__(
        self,
        spec: TrainSpec,
        info: DatasetInfo,
        dataset: Dataset,
        checkpoint_dir: Path,
        emit: Callable[[events.Event], None],
        should_stop: Callable[[], bool] = lambda: False,
        resume_from: Path | None = None,
    ) -> None:
        self.spec = spec
        self.config = spec.config
        self.info = info
        self.model_config = check_compatible(spec, info)
        self.device = choose_device(self.config.device)
        self.checkpoint_dir = checkpoint_dir
        self.emit = emit
        self.should_stop = should_stop
        self.resume_from = resume_from
        self.tensorboard = (
            TensorBoardLog(checkpoint_dir / "tensorboard") if spec.config.tensorboard else None
        )
        seed_everything(self.config.seed)
        loaders = split_and_load(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=self.config.shuffle,
            drop_last=self.config.drop_last,
            num_workers=self.config.num_workers,
            val_fraction=self.config.val_fraction,
            seed=self.config.seed,
            device=self.device,
        )
        self.train_loader, self.val_loader = loaders.train, loaders.val
        self.train_samples, self.val_samples = loaders.train_samples, loaders.val_samples
        self.model = self.model_config.build().to(self.device)
        self.loss_fn = LOSSES[self.config.loss][0]()
        self.optimizer = _build_optimizer(self.model, self.config, self.device)
        # Mixed precision where it pays: float16 autocast with loss scaling on CUDA.
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def run(self) -> FitResult:
        """Trains for the configured epochs, or until early stopping or cancellation.

        When resuming, the checkpoint's learning curve is replayed first, so that the best
        epoch and the patience count are where the interrupted run left them.
        """
        try:
            return self._run()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _run(self) -> FitResult:
        config, result = self.config, FitResult()
        start = self._restore(result) if self.resume_from is not None else 1
        tracker = _Improvement(config.min_delta)
        for record in result.history:
            if tracker.improved(record):
                result.best_epoch = record.epoch
        self.emit(
            events.Started(
                str(self.device),
                self.train_samples,
                self.val_samples,
                config.epochs,
                len(self.train_loader),
                start_epoch=start,
            )
        )
        if self.tensorboard is not None:
            example = torch.zeros(1, *self.model_config.input_shape, device=self.device)
            self.tensorboard.graph(self.model, example)
        for epoch in range(start, config.epochs + 1):
            record = self._train_epoch(epoch)
            if record is None:
                result.cancelled = True
                return result
            result.history.append(record)
            # Checkpoints first, then the event: a logged epoch always has its checkpoint.
            if tracker.improved(record):
                result.best_epoch = epoch
                self._save("best", record, result.history)
            self._save("last", record, result.history)
            eta = record.seconds * (config.epochs - epoch)
            self.emit(events.EpochEnd(record, eta, config.epochs))
            if self.tensorboard is not None:
                self.tensorboard.epoch(record)
            patience_out = config.patience and tracker.bad_epochs >= config.patience
            if self.val_loader is not None and patience_out:
                result.stopped_early = epoch < config.epochs
                break
        return result

    def _restore(self, result: FitResult) -> int:
        """Loads model, optimizer and learning curve from the checkpoint; returns the next epoch."""
        assert self.resume_from is not None
        state = load_checkpoint(self.resume_from, map_location=self.device)
        self.model.load_state_dict(state["model"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        result.history = [events.EpochRecord(**record) for record in state.get("history", [])]
        return int(state["epoch"]) + 1

    def _train_epoch(self, epoch: int) -> events.EpochRecord | None:
        """One pass over the training data; None when cancelled."""
        self.model.train()
        steps = len(self.train_loader)
        # Sums stay on the device: no host sync per batch, only at the epoch's end and for
        # the throttled progress events.
        loss_sum = torch.zeros((), device=self.device)
        metric_sum = torch.zeros((), device=self.device)
        count = 0
        classification = self.config.task == CLASSIFICATION
        started = last_report = time.monotonic()
        for step, (inputs, targets) in enumerate(self.train_loader, start=1):
            if self.should_stop():
                return None
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            if self.amp:
                with torch.autocast(self.device.type, dtype=torch.float16):
                    output = align_output(self.model(inputs), targets, self.config.task)
                    loss = self.loss_fn(output, targets)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                output = align_output(self.model(inputs), targets, self.config.task)
                loss = self.loss_fn(output, targets)
                loss.backward()
                self.optimizer.step()
            batch = len(targets)
            count += batch
            with torch.no_grad():
                loss_sum += loss.detach() * batch
                if classification:
                    metric_sum += (output.argmax(dim=1) == targets).sum()
                else:
                    metric_sum += (output.float() - targets).abs().mean() * batch
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_S and step < steps:
                last_report = now
                progress = events.StepProgress(epoch, step, steps, loss.item())
                self.emit(progress)
                if self.tensorboard is not None:
                    self.tensorboard.step(progress, (epoch - 1) * steps + step)
        seconds = time.monotonic() - started
        metric_name = "accuracy" if self.config.task == CLASSIFICATION else "mae"
        record = events.EpochRecord(
            epoch=epoch,
            train_loss=loss_sum.item() / count,
            train_metrics={metric_name: metric_sum.item() / count},
            samples_per_second=count / seconds if seconds > 0 else 0.0,
            seconds=seconds,
            learning_rate=self.optimizer.param_groups[0]["lr"],
        )
        if self.val_loader is None:
            return record
        val = evaluate(
            self.model,
            self.val_loader,
            self.loss_fn,
            self.config.task,
            self.info.classes,
            self.device,
        )
        return events.EpochRecord(
            **{**asdict(record), "val_loss": val.loss, "val_metrics": val.metrics}
        )

    def _save(
        self, role: str, record: events.EpochRecord, history: list[events.EpochRecord]
    ) -> None:
        save_checkpoint(
            self.checkpoint_dir / f"{role}.pt",
            self.model,
            self.model_config,
            record.epoch,
            headline_metrics(record),
            optimizer=self.optimizer,
            history=[events.to_payload(r) for r in history],
        )
        self.emit(events.CheckpointSaved(record.epoch, role))
