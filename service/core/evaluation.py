"""Evaluation in eval mode without gradients: loss, accuracy, per-class precision and recall,
a confusion matrix, or MSE and MAE for regression."""

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.objectives import Objective


@dataclass(frozen=True)
class ClassMetrics:
    """Precision and recall of one class."""

    name: str
    precision: float
    recall: float
    support: int


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate` measured."""

    num_samples: int
    loss: float
    metrics: dict[str, float]
    per_class: list[ClassMetrics] = field(default_factory=list)
    confusion_matrix: torch.Tensor | None = None


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    objective: Objective,
    loss_fn: nn.Module,
    classes: tuple[str, ...],
    device: torch.device,
) -> EvaluationResult:
    """Runs the whole loader through `model` in eval mode under `torch.inference_mode()`.

    Args:
        model: the module, already on `device`.
        loader: batches of (inputs, targets).
        objective: how outputs meet targets (the task, binary or not).
        loss_fn: the training loss; its mean over samples is reported.
        classes: class names (classification), index = class id.
        device: where the model lives.
    """
    was_training = model.training
    model.eval()
    task = objective.task
    loss_sum, count, abs_err, sq_err = 0.0, 0, 0.0, 0.0
    num_classes = len(classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    with torch.inference_mode():
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            output = model(inputs).float()
            batch = len(targets)
            loss_sum += objective.loss(loss_fn, output, targets).item() * batch
            count += batch
            if task == CLASSIFICATION:
                predicted = objective.predicted(output)
                confusion += torch.bincount(
                    targets * num_classes + predicted, minlength=num_classes * num_classes
                )
            else:
                error = output.view_as(targets) - targets
                abs_err += error.abs().mean().item() * batch
                sq_err += error.square().mean().item() * batch
    model.train(was_training)
    if count == 0:
        return EvaluationResult(num_samples=0, loss=float("nan"), metrics={})
    loss = loss_sum / count
    if task != CLASSIFICATION:
        return EvaluationResult(count, loss, {"mse": sq_err / count, "mae": abs_err / count})
    matrix = confusion.view(num_classes, num_classes).cpu()
    return _classification_result(matrix, count, loss, classes)


def _classification_result(
    matrix: torch.Tensor, count: int, loss: float, classes: tuple[str, ...]
) -> EvaluationResult:
    """Accuracy, per-class precision and recall, from the confusion matrix (true x predicted)."""
    true_positives = matrix.diag()
    predicted_totals = matrix.sum(dim=0)
    support = matrix.sum(dim=1)
    per_class = [
        ClassMetrics(
            name=classes[c],
            precision=_ratio(true_positives[c], predicted_totals[c]),
            recall=_ratio(true_positives[c], support[c]),
            support=int(support[c]),
        )
        for c in range(len(classes))
    ]
    accuracy = true_positives.sum().item() / count
    return EvaluationResult(count, loss, {"accuracy": accuracy}, per_class, matrix)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    return float(numerator) / float(denominator) if int(denominator) else 0.0
