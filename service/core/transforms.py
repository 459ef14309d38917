"""Preprocessing as data: transform specs from a request, validated, built with
torchvision.transforms.v2, and the evaluation transform derived from the training one.

A spec is a one-key dict in the protobuf JSON form, e.g. `{"resize": {"size": [32, 32]}}`,
so it travels in job requests and model metadata as plain JSON.
"""

import functools
import io
import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from torchwire.service.errors import InvalidArgument, Summary, counted

Spec = dict[str, dict[str, Any]]
TO_TENSOR = "to_tensor"
IMAGE_FORMATS = ("PNG", "JPEG")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
"""Images larger than this are refused before they are decoded (decompression bombs)."""
Transform = Callable[[Any], Any]


def _v2() -> ModuleType:
    """torchvision.transforms.v2, imported on first use: importing torchvision also loads
    torch._dynamo, a second and a half that a server without transforms need not pay."""
    from torchvision.transforms import v2

    return v2


def _size(field: str, params: dict[str, Any]) -> list[int]:
    size = [int(s) for s in params.get("size", [])]
    if len(size) not in (1, 2) or not all(1 <= s <= 4096 for s in size):
        raise InvalidArgument.field(f"{field}.size", size, "give 1 or 2 sizes, each in [1, 4096]")
    return size


def _probability(field: str, params: dict[str, Any]) -> float:
    p = float(params.get("p", 0.5))
    if not 0 <= p <= 1:
        raise InvalidArgument.field(f"{field}.p", p, "must be in [0, 1]")
    return p


def _grayscale(field: str, params: dict[str, Any]) -> Transform:
    channels = int(params.get("num_output_channels", 0)) or 1
    if channels not in (1, 3):
        raise InvalidArgument.field(f"{field}.num_output_channels", channels, "must be 1 or 3")
    return _v2().Grayscale(channels)


def _random_crop(field: str, params: dict[str, Any]) -> Transform:
    padding = int(params.get("padding", 0))
    if not 0 <= padding <= 1024:
        raise InvalidArgument.field(f"{field}.padding", padding, "must be in [0, 1024]")
    return _v2().RandomCrop(_size(field, params), padding=padding or None)


@functools.cache
def _normalize_type() -> type:
    """Normalize that refuses a channel count other than its own: torchvision's would
    broadcast one channel to three without a word."""

    class CheckedNormalize(_v2().Normalize):  # type: ignore[misc]
        def forward(self, *inputs: Any) -> Any:
            image = inputs[0]
            channels = image.shape[-3] if isinstance(image, torch.Tensor) and image.ndim >= 3 else 0
            if channels and channels != len(self.mean):
                raise ValueError(
                    f"normalize has {len(self.mean)} means, but the image has {channels} channels"
                )
            return super().forward(*inputs)

    return CheckedNormalize


def _normalize(field: str, params: dict[str, Any]) -> Transform:
    mean = [float(m) for m in params.get("mean", [])]
    std = [float(s) for s in params.get("std", [])]
    if not mean or len(mean) != len(std):
        raise InvalidArgument.field(
            f"{field}.mean", mean, f"give one mean and one std per channel (std has {len(std)})"
        )
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise InvalidArgument.field(f"{field}.std", std, "must be finite, and each std > 0")
    return _normalize_type()(mean, std)


def _to_tensor(field: str, params: dict[str, Any]) -> Transform:
    # v2's spelling of the classic ToTensor: an image tensor, float32 scaled to [0, 1].
    return _v2().Compose([_v2().ToImage(), _v2().ToDtype(torch.float32, scale=True)])


_BUILDERS: dict[str, Callable[[str, dict[str, Any]], Transform]] = {
    "resize": lambda field, params: _v2().Resize(_size(field, params)),
    "center_crop": lambda field, params: _v2().CenterCrop(_size(field, params)),
    "random_crop": _random_crop,
    "random_horizontal_flip": lambda field, params: _v2().RandomHorizontalFlip(
        _probability(field, params)
    ),
    "grayscale": _grayscale,
    TO_TENSOR: _to_tensor,
    "normalize": _normalize,
}


def _kind(field: str, spec: Spec) -> tuple[str, dict[str, Any]]:
    if len(spec) != 1 or next(iter(spec)) not in _BUILDERS:
        raise InvalidArgument.field(field, spec, f"must be one of {sorted(_BUILDERS)}")
    kind, params = next(iter(spec.items()))
    return kind, params or {}


def with_to_tensor(specs: Sequence[Spec]) -> list[Spec]:
    """Images need a ToTensor: inserted before the first Normalize, or appended at the end."""
    kinds = [next(iter(s)) for s in specs]
    if TO_TENSOR in kinds:
        return list(specs)
    at = kinds.index("normalize") if "normalize" in kinds else len(kinds)
    return [*specs[:at], {TO_TENSOR: {}}, *specs[at:]]


def _unchanged(sample: Any) -> Any:
    return sample


def build(specs: Sequence[Spec], field: str = "transforms") -> Transform:
    """The torchvision pipeline of `specs`; invalid parameters raise `InvalidArgument`."""
    steps = []
    for index, spec in enumerate(specs):
        kind, params = _kind(f"{field}[{index}]", spec)
        steps.append(_BUILDERS[kind](f"{field}[{index}].{kind}", params))
    return _v2().Compose(steps) if steps else _unchanged


def derive_eval(specs: Sequence[Spec]) -> list[Spec]:
    """The deterministic counterpart of a training pipeline: random flips dropped, random
    crops turned into centre crops of the same size."""
    derived: list[Spec] = []
    for spec in specs:
        kind, params = next(iter(spec.items()))
        if kind == "random_horizontal_flip":
            continue
        if kind == "random_crop":
            derived.append({"center_crop": {"size": list(params.get("size", []))}})
        else:
            derived.append(spec)
    return derived


def decode_image(field: str, data: bytes, mode: str) -> Image.Image:
    """Decodes a PNG or JPEG into `mode` ("L" or "RGB").

    Raises:
        InvalidArgument: not a PNG or JPEG, corrupt, or larger than MAX_IMAGE_PIXELS.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in IMAGE_FORMATS:
            raise InvalidArgument.field(
                field,
                counted(len(data), "byte", f"of {image.format}"),
                "must be a PNG or JPEG image",
            )
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise InvalidArgument.field(
                field,
                Summary(f"{image.width}x{image.height} pixels"),
                f"exceeds {MAX_IMAGE_PIXELS} pixels",
            )
        return image.convert(mode)
    except InvalidArgument:
        raise
    except UnidentifiedImageError as err:  # its message shows the BytesIO, not the data
        raise InvalidArgument.field(
            field, counted(len(data), "byte"), "is not a PNG or JPEG image"
        ) from err
    except Exception as err:  # PIL raises many types for bad data
        raise InvalidArgument.field(
            field, counted(len(data), "byte"), f"cannot be decoded as PNG or JPEG: {err}"
        ) from err


def preprocess_images(
    images: Sequence[bytes],
    mode: str,
    specs: Sequence[Spec],
    input_shape: Sequence[int],
    field: str = "images",
) -> np.ndarray:
    """Decodes encoded images and applies a model's evaluation transforms: the batch Predict
    runs, float32 [n, *input_shape].

    Raises:
        InvalidArgument: no image, an image cannot be decoded, or one does not come out as
            `input_shape`; `field` names the request's list of images.
    """
    if not images:
        raise InvalidArgument.field(field, counted(0, "image"), "needs at least one image")
    pipeline = build(with_to_tensor(specs), "eval_transforms")
    rows = []
    for index, data in enumerate(images):
        tensor = pipeline(decode_image(f"{field}[{index}]", data, mode))
        if tuple(tensor.shape) != tuple(input_shape):
            raise InvalidArgument.field(
                f"{field}[{index}]",
                list(tensor.shape),
                f"after the model's transforms it must be {list(input_shape)}; "
                "send images of the size the model was trained on",
            )
        rows.append(tensor.numpy())
    return np.stack(rows).astype(np.float32, copy=False)
