"""TensorBoard logging for a training run: per-step and per-epoch scalars and the model graph."""

import logging
from pathlib import Path

import torch
from torch import nn

from torchwire.service.core import events

log = logging.getLogger(__name__)


class TensorBoardLog:
    """Writes a run's learning curves as TensorBoard event files in `directory`."""

    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

        self.writer = SummaryWriter(log_dir=str(directory))

    def graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """Records the model graph; tracing is cheap for these models, and optional."""
        try:
            self.writer.add_graph(model, example)
        except Exception as err:  # a model that does not trace still trains
            log.warning("TensorBoard: the model graph could not be traced: %s", err)

    def steps(self, first_step: int, losses: list[float]) -> None:
        """Every step's training loss of an epoch (`train/batch_loss`), numbered from
        `first_step` across epochs."""
        for step, loss in enumerate(losses, start=first_step):
            self.writer.add_scalar("train/batch_loss", loss, step)

    def epoch(self, record: events.EpochRecord) -> None:
        scalars = {
            "train/loss": record.train_loss,
            "learning_rate": record.learning_rate,
            "train/samples_per_second": record.samples_per_second,
            "train/epoch_seconds": record.seconds,
        }
        scalars.update({f"train/{k}": v for k, v in record.train_metrics.items()})
        if record.val_loss is not None:
            scalars["val/loss"] = record.val_loss
        scalars.update({f"val/{k}": v for k, v in record.val_metrics.items()})
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
