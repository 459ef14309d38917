"""Checkpoints: state_dicts plus the model config that rebuilds the module, written atomically
and loaded with `weights_only=True`."""

from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchwire.service.core.architectures import ModelConfig
from torchwire.service.core.files import atomic_write
from torchwire.service.errors import FailedPrecondition


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under `torch.compile` (`_orig_mod`) and DDP (`module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_checkpoint(
    path: Path,
    model: nn.Module,
    model_config: ModelConfig,
    epoch: int,
    metrics: dict[str, float],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Writes `{model, optimizer, scheduler, epoch, model_config, metrics, history}` to `path`
    atomically; `history` (the learning curves so far) lets a resumed run go on exactly.

    The file appears complete or not at all: it is written to a temporary file in
    the same directory, flushed to disk, then renamed over `path`.
    """
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "model_config": model_config.to_dict(),
        "metrics": dict(metrics),
        "history": list(history or []),
    }
    with atomic_write(path) as scratch:
        torch.save(state, scratch)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint without unpickling code (`weights_only=True`).

    Raises:
        FailedPrecondition: the file is missing, truncated, or not a torchwire checkpoint.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise FailedPrecondition(f"checkpoint {path.name} is missing from the store") from err
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise FailedPrecondition(f"checkpoint {path.name} cannot be loaded safely: {err}") from err
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise FailedPrecondition(f"checkpoint {path.name} is not a torchwire checkpoint")
    return state


def load_model(path: Path, device: torch.device) -> tuple[nn.Module, ModelConfig]:
    """Rebuilds the module from a checkpoint's config, loads its weights, and sets eval mode."""
    state = load_checkpoint(path, map_location=device)
    config = ModelConfig.from_dict(state["model_config"])
    model = config.build()
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
