"""Losses and how a model's output meets the targets: the head's width, the loss call, the
predicted classes and the metrics that fit the task."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torchwire.service.core.datasets import CLASSIFICATION, REGRESSION, DatasetInfo


class LogSoftmaxNLLLoss(nn.Module):
    """NLLLoss over the log-probabilities of the head's logits."""

    def forward(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(output, dim=1), targets)


@dataclass(frozen=True)
class Objective:
    """A loss function and the task it trains.

    Attributes:
        name: the loss's name in requests.
        task: "classification" or "regression".
        make: builds the loss module from the label smoothing (used by cross_entropy only).
        binary: one logit per sample for two classes (BCEWithLogits), not one per class.
    """

    name: str
    task: str
    make: Callable[[float], nn.Module]
    binary: bool = False

    @property
    def metric(self) -> str:
        """The training metric: "accuracy" or "mae"."""
        return "accuracy" if self.task == CLASSIFICATION else "mae"

    def output_size(self, info: DatasetInfo) -> int:
        """The head's width for this data."""
        return 1 if self.binary else info.output_size

    def loss(self, fn: nn.Module, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of a batch: class ids, or values shaped as the targets."""
        if self.binary:
            return fn(output.view(-1), targets.to(output.dtype))
        if self.task == REGRESSION:
            return fn(output.view_as(targets), targets)
        return fn(output, targets)

    def predicted(self, output: torch.Tensor) -> torch.Tensor:
        """The predicted class ids of a classifier's batch."""
        return (output.view(-1) > 0).long() if self.binary else output.argmax(dim=1)


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "cross_entropy", CLASSIFICATION, lambda s: nn.CrossEntropyLoss(label_smoothing=s)
        ),
        Objective("nll", CLASSIFICATION, lambda s: LogSoftmaxNLLLoss()),
        Objective("bce_with_logits", CLASSIFICATION, lambda s: nn.BCEWithLogitsLoss(), True),
        Objective("mse", REGRESSION, lambda s: nn.MSELoss()),
        Objective("l1", REGRESSION, lambda s: nn.L1Loss()),
    )
}


def default_objective(task: str, output_size: int) -> Objective:
    """The loss that evaluates a model trained elsewhere (an import): cross-entropy for a
    classifier (BCE with logits for a single logit), MSE for regression."""
    if task != CLASSIFICATION:
        return OBJECTIVES["mse"]
    return OBJECTIVES["bce_with_logits" if output_size == 1 else "cross_entropy"]
