"""The training loop: zero_grad, forward, loss, backward, step over epochs, with validation,
learning-rate schedules, gradient clipping, early stopping, best and last checkpoints, and
per-epoch learning curves."""

import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchwire.service.core import events
from torchwire.service.core.checkpoint import load_checkpoint, save_checkpoint
from torchwire.service.core.compatibility import check_compatible
from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.device import choose_device
from torchwire.service.core.distributed import (
    Rank,
    all_sum,
    any_rank,
    share_start,
)
from torchwire.service.core.evaluation import evaluate
from torchwire.service.core.loaders import Loaders, Shard, split_and_load
from torchwire.service.core.optimization import build_optimizer, build_scheduler
from torchwire.service.core.pipeline import DataPipeline
from torchwire.service.core.spec import TrainSpec
from torchwire.service.core.stopping import EarlyStopping
from torchwire.service.core.tensorboard import TensorBoardLog

PROGRESS_INTERVAL_S = 0.5


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices) so that CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _training_device(requested: str, rank: Rank | None) -> torch.device:
    """The device to train on; in a distributed run on CUDA, this rank's own GPU."""
    device = choose_device(requested)
    if rank is not None and device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
        torch.cuda.set_device(device)
    return device


class Trainer:
    """Runs one training: the classic PyTorch loop, reporting through `emit`.

    Args:
        spec: what to train and how.
        pipeline: the data with its training and evaluation preprocessing.
        checkpoint_dir: where `best.pt` and `last.pt` go.
        emit: receives every event (started, progress, epoch end, checkpoint saved).
        should_stop: polled before every batch and before an epoch's checkpoints are written;
            True cancels the run there (a cancelled run writes nothing more).
        resume_from: a `last.pt` to continue from (model, optimizer, scheduler, curves).
        init_from: a checkpoint whose weights start a fresh run (fine-tuning).
        rank: this process's place in a distributed job (None: a single process). Every
            rank trains its shard of the data under DistributedDataParallel, with the sums of
            the metrics over all ranks; only the writer reads `resume_from`/`init_from` (its
            state is then broadcast), writes checkpoints and sends events.
    """

    def __init__(
        self,
        spec: TrainSpec,
        pipeline: DataPipeline,
        checkpoint_dir: Path,
        emit: Callable[[events.Event], None],
        should_stop: Callable[[], bool] = lambda: False,
        resume_from: Path | None = None,
        init_from: Path | None = None,
        rank: Rank | None = None,
    ) -> None:
        self.spec = spec
        self.config = config = spec.config
        self.objective = config.objective
        self.info = pipeline.info
        self.model_config = check_compatible(spec, self.info)
        self.rank = rank
        self.writer = rank is None or rank.writer
        self.device = _training_device(config.device, rank)
        self.checkpoint_dir = checkpoint_dir
        self.emit = emit if self.writer else lambda event: None
        self.should_stop = should_stop
        self.tensorboard = (
            TensorBoardLog(checkpoint_dir / "tensorboard")
            if config.tensorboard and self.writer
            else None
        )
        seed_everything(config.seed)
        self.loaders = loaders = self._load(pipeline)
        self.train_loader, self.val_loader = loaders.train, loaders.val
        self.train_samples, self.val_samples = loaders.train_samples, loaders.val_samples
        # channels_last helps convolutions on tensor cores; only 4-d (image) batches have it.
        self.memory_format = (
            torch.channels_last
            if config.channels_last and len(self.info.feature_shape) == 3
            else torch.contiguous_format
        )
        self.module = self.model_config.build().to(self.device, memory_format=self.memory_format)
        self.loss_fn = self.objective.make(config.label_smoothing)
        self.optimizer = build_optimizer(self.module, config, self.device)
        self.scheduler = build_scheduler(self.optimizer, config, len(self.train_loader))
        self.per_batch_schedule = config.scheduler == "one_cycle"
        self.start_epoch = 1
        self.history: list[events.EpochRecord] = []
        self.warm_started = 0
        if self.writer and resume_from is not None:
            self._restore(resume_from)
        elif self.writer and init_from is not None:
            self.warm_started = self._warm_start(init_from)
        if rank is not None:
            self._synchronise(rank)
        self.model = self._wrap(self.module)
        # Mixed precision where it pays: float16 autocast with loss scaling on CUDA.
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def _load(self, pipeline: DataPipeline) -> Loaders:
        """Holds out the validation subset and batches both parts (this rank's shard)."""
        config, rank = self.config, self.rank
        same = pipeline.transforms == pipeline.eval_transforms
        return split_and_load(
            pipeline.train_set(),
            val_dataset=None if same else pipeline.eval_set(),
            batch_size=config.batch_size,
            shuffle=config.shuffle,
            drop_last=config.drop_last,
            num_workers=config.num_workers,
            val_fraction=config.val_fraction,
            seed=config.seed,
            device=self.device,
            shard=Shard(rank.rank, rank.world_size, config.seed) if rank else None,
        )

    def _wrap(self, module: nn.Module) -> nn.Module:
        """The module as training calls it: under DDP in a distributed run, compiled if asked."""
        model = module
        if self.rank is not None:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        if self.config.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        return model

    def _warm_start(self, path: Path) -> int:
        """Loads the tensors of a checkpoint whose names and shapes match; returns how many."""
        own = self.module.state_dict()
        loaded = {
            name: tensor
            for name, tensor in load_checkpoint(path, map_location=self.device)["model"].items()
            if name in own and own[name].shape == tensor.shape
        }
        self.module.load_state_dict(loaded, strict=False)
        return len(loaded)

    def run(self) -> events.FitResult:
        """Trains for the configured epochs, or until early stopping or cancellation.

        When resuming, the checkpoint's learning curve is replayed first, so that the best
        epoch and the patience count are where the interrupted run left them.
        """
        try:
            return self._run()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _run(self) -> events.FitResult:
        config, result = self.config, events.FitResult(history=list(self.history))
        start = self.start_epoch
        tracker = EarlyStopping(config.monitor, config.min_delta)
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
                warm_started_tensors=self.warm_started,
                world_size=self.rank.world_size if self.rank else 1,
            )
        )
        if self.tensorboard is not None:
            example = torch.zeros(1, *self.model_config.input_shape, device=self.device)
            self.tensorboard.graph(self.module, example)
        for epoch in range(start, config.epochs + 1):
            record = self._train_epoch(epoch)
            if record is None:
                result.cancelled = True
                return result
            if self._stopping():  # cancelled, or the server is gone: write nothing more
                result.cancelled = True
                return result
            if self.scheduler is not None and not self.per_batch_schedule:
                self.scheduler.step()
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

    def _restore(self, path: Path) -> None:
        """Loads model, optimizer, scheduler and learning curve from a checkpoint, and
        continues after its epoch."""
        state = load_checkpoint(path, map_location=self.device)
        self.module.load_state_dict(state["model"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = [events.EpochRecord(**record) for record in state.get("history", [])]
        self.start_epoch = int(state["epoch"]) + 1

    def _synchronise(self, rank: Rank) -> None:
        """Gives every rank the writer's starting state: weights (fresh, fine-tuned or resumed),
        optimizer and scheduler state, learning curve and first epoch, once every rank has been
        checked to see the writer's data (see `distributed.share_start`)."""
        data = {
            "samples": self.train_samples + self.val_samples,
            "classes": list(self.info.classes),
            "shape": list(self.info.feature_shape),
            "steps_per_epoch": len(self.train_loader),
        }
        state = share_start(rank, self.device, data, self._start_state() if rank.writer else None)
        if rank.writer:
            return
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history, self.start_epoch = state["history"], state["start_epoch"]
        self.warm_started = state["warm_started"]

    def _start_state(self) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": self.history,
            "start_epoch": self.start_epoch,
            "warm_started": self.warm_started,
        }

    def _step(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """zero_grad, forward, loss, backward, (clip), step; returns the output and the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            output = self.model(inputs)
            loss = self.objective.loss(self.loss_fn, output, targets)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.per_batch_schedule:
            assert self.scheduler is not None
            self.scheduler.step()
        return output, loss

    def _stopping(self) -> bool:
        """`should_stop()`, agreed by every rank: all stop at the same point, or the others
        would wait in the next all-reduce."""
        stop = self.should_stop()
        return any_rank(stop, self.device) if self.rank is not None else stop

    def _train_epoch(self, epoch: int) -> events.EpochRecord | None:
        """One pass over the training data, then validation; None when cancelled."""
        self.model.train()
        self.loaders.set_epoch(epoch)
        learning_rate = self.optimizer.param_groups[0]["lr"]
        started = time.monotonic()
        sums = self._train_batches(epoch)
        if sums is None:
            return None
        seconds = time.monotonic() - started
        if self.rank is not None:
            sums = all_sum(sums, self.device)
        count = int(sums[2])
        record = events.EpochRecord(
            epoch=epoch,
            train_loss=sums[0] / count,
            train_metrics={self.objective.metric: sums[1] / count},
            samples_per_second=count / seconds if seconds > 0 else 0.0,
            seconds=seconds,
            learning_rate=learning_rate,
        )
        return record if self.val_loader is None else self._validate(record)

    def _train_batches(self, epoch: int) -> list[float] | None:
        """Steps through this epoch's batches; returns the sums of the loss and the metric over
        the samples, and their count (None when cancelled)."""
        steps = len(self.train_loader)
        # Sums stay on the device: no host sync per batch, only at the epoch's end and for
        # the throttled progress events.
        loss_sum = torch.zeros((), device=self.device)
        metric_sum = torch.zeros((), device=self.device)
        step_losses: list[torch.Tensor] = []  # for TensorBoard, read once at the end
        count = 0
        classification = self.objective.task == CLASSIFICATION
        last_report = time.monotonic()
        for step, (inputs, targets) in enumerate(self.train_loader, start=1):
            if self._stopping():
                return None
            inputs = inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = targets.to(self.device, non_blocking=True)
            output, loss = self._step(inputs, targets)
            batch = len(targets)
            count += batch
            with torch.no_grad():
                loss_sum += loss.detach() * batch
                if self.tensorboard is not None:
                    step_losses.append(loss.detach())
                if classification:
                    metric_sum += (self.objective.predicted(output) == targets).sum()
                else:
                    error = output.float().view_as(targets) - targets
                    metric_sum += error.abs().mean() * batch
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_S and step < steps:
                last_report = now
                self.emit(events.StepProgress(epoch, step, steps, loss.item()))
        if self.tensorboard is not None and step_losses:
            first_step = (epoch - 1) * steps + 1
            self.tensorboard.steps(first_step, torch.stack(step_losses).tolist())
        return [loss_sum.item(), metric_sum.item(), float(count)]

    def _validate(self, record: events.EpochRecord) -> events.EpochRecord:
        """The epoch's record with the validation loss and metric added."""
        # Each rank validates on the whole held-out subset with its own replica (no
        # collectives inside); the mean over ranks evens out BatchNorm statistics that
        # differ slightly, so that every rank takes the same early-stopping decision.
        assert self.val_loader is not None
        val = evaluate(
            self.module if self.rank is not None else self.model,
            self.val_loader,
            self.objective,
            self.loss_fn,
            self.info.classes,
            self.device,
        )
        metric = self.objective.metric
        val_loss, val_metric = val.loss, val.metrics[metric]
        if self.rank is not None:
            total = all_sum([val_loss, val_metric], self.device)
            val_loss, val_metric = (value / self.rank.world_size for value in total)
        return events.EpochRecord(
            **{**asdict(record), "val_loss": val_loss, "val_metrics": {metric: val_metric}}
        )

    def _save(
        self, role: str, record: events.EpochRecord, history: list[events.EpochRecord]
    ) -> None:
        if not self.writer:
            return
        save_checkpoint(
            self.checkpoint_dir / f"{role}.pt",
            self.module,
            self.model_config,
            record.epoch,
            events.headline_metrics(record),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            history=[events.to_payload(r) for r in history],
        )
        self.emit(events.CheckpointSaved(record.epoch, role))
