"""Early stopping: the best value of the monitored metric, and the epochs since it improved."""

import math

from torchwire.service.core import events


class EarlyStopping:
    """Early stopping's bookkeeping: the best monitored value and the epochs since it improved.

    Losses and errors improve downwards, accuracy upwards.
    """

    def __init__(self, monitor: str, min_delta: float) -> None:
        self.split, _, self.metric = monitor.partition("_")
        self.sign = -1.0 if self.metric == "accuracy" else 1.0
        self.min_delta = min_delta
        self.best = math.inf
        self.bad_epochs = 0

    def improved(self, record: events.EpochRecord) -> bool:
        """Takes an epoch's record; True when it beats the best by more than `min_delta`."""
        if self.metric == "loss":
            value = record.val_loss if self.split == "val" else record.train_loss
        else:
            value = (record.val_metrics if self.split == "val" else record.train_metrics)[
                self.metric
            ]
        assert value is not None
        if self.sign * value < self.best - self.min_delta:
            self.best, self.bad_epochs = self.sign * value, 0
            return True
        self.bad_epochs += 1
        return False
