"""Automatic device choice: cuda, then mps, then cpu."""

import torch

from torchwire.service.errors import InvalidArgument

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def choose_device(preference: str = "auto") -> torch.device:
    """Returns the device to train or infer on.

    Args:
        preference: "auto" (cuda, then mps, then cpu) or a device type to insist on.

    Raises:
        InvalidArgument: the preference is unknown or its device is not present.
    """
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if preference == "mps" and _mps_available():
        return torch.device("mps")
    if preference in DEVICE_CHOICES:
        raise InvalidArgument.field("config.device", preference, "not available on this server")
    raise InvalidArgument.field("config.device", preference, f"must be one of {DEVICE_CHOICES}")
