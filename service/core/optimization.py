"""The optimizer and the learning-rate schedule of a training run, built from its config."""

from typing import Any

import torch
from torch import nn

from torchwire.service.core.spec import TrainConfig

FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters (fused where the device has it)."""
    # The fused kernels do the whole update in one pass: about a quarter less time per step
    # for small models on the CPU (BENCHMARKS.md), and the usual choice on CUDA.
    fused = device.type in FUSED_DEVICES
    common: dict[str, Any] = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            momentum=config.momentum,
            nesterov=config.nesterov,
            fused=fused,
            **common,
        )
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), momentum=config.momentum, **common)
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), fused=fused, **common)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule; one_cycle steps per batch, the others per epoch."""
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
        )
    return None
