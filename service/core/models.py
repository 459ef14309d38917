"""Built-in architectures and the model config that rebuilds them from a checkpoint."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from torchwire.service.errors import InvalidArgument


@dataclass(frozen=True)
class MLPParams:
    """Flatten, then (Linear, ReLU, Dropout) per hidden layer, then a Linear head."""

    hidden_sizes: tuple[int, ...] = (128, 64)
    dropout: float = 0.0


@dataclass(frozen=True)
class CNNParams:
    """Per channel count a Conv3x3/BatchNorm/ReLU/MaxPool block, then pooling and a head."""

    channels: tuple[int, ...] = (32, 64)
    dropout: float = 0.0


class MLP(nn.Module):
    """A multi-layer perceptron over flattened inputs."""

    def __init__(self, input_shape: tuple[int, ...], output_size: int, params: MLPParams) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in params.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(params.dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, output_size)

    def forward(self, x):
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    """Conv/BatchNorm/ReLU/MaxPool blocks, global average pooling, then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], output_size: int, params: CNNParams) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out_channels in params.channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            # Pool only while the feature map is large enough to halve.
            if height >= 2 and width >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(params.dropout),
            nn.Linear(in_channels, output_size),
        )

    def forward(self, x):
        return self.head(self.features(x))


def _check_mlp(params: MLPParams, input_shape: tuple[int, ...]) -> None:
    for size in params.hidden_sizes:
        if not 1 <= size <= 65536:
            raise InvalidArgument.field(
                "model.mlp.hidden_sizes",
                list(params.hidden_sizes),
                "each size must be in [1, 65536]",
            )
    if len(params.hidden_sizes) > 32:
        raise InvalidArgument.field(
            "model.mlp.hidden_sizes", list(params.hidden_sizes), "at most 32 layers"
        )
    if not 0 <= params.dropout < 1:
        raise InvalidArgument.field("model.mlp.dropout", params.dropout, "must be in [0, 1)")


def _check_cnn(params: CNNParams, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise InvalidArgument.field(
            "model.cnn", list(input_shape), "the CNN needs image inputs of shape [C, H, W]"
        )
    if not params.channels or len(params.channels) > 16:
        raise InvalidArgument.field(
            "model.cnn.channels", list(params.channels), "give 1 to 16 blocks"
        )
    for channels in params.channels:
        if not 1 <= channels <= 4096:
            raise InvalidArgument.field(
                "model.cnn.channels", list(params.channels), "each count must be in [1, 4096]"
            )
    if not 0 <= params.dropout < 1:
        raise InvalidArgument.field("model.cnn.dropout", params.dropout, "must be in [0, 1)")


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its parameters' type, a validator and the module class."""

    params_type: type
    check: Callable[[Any, tuple[int, ...]], None]
    module: Callable[[tuple[int, ...], int, Any], nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(MLPParams, _check_mlp, MLP),
    "cnn": Architecture(CNNParams, _check_cnn, SmallCNN),
}


@dataclass(frozen=True)
class ModelConfig:
    """All that is needed to rebuild a module: saved in every checkpoint beside its state_dict."""

    architecture: str
    params: MLPParams | CNNParams
    input_shape: tuple[int, ...]
    output_size: int

    def __post_init__(self) -> None:
        spec = ARCHITECTURES.get(self.architecture)
        if spec is None:
            raise InvalidArgument.field(
                "model",
                self.architecture,
                f"unknown architecture; choose from {sorted(ARCHITECTURES)}",
            )
        spec.check(self.params, self.input_shape)

    def build(self) -> nn.Module:
        """Instantiates the module with fresh weights."""
        return ARCHITECTURES[self.architecture].module(
            self.input_shape, self.output_size, self.params
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of lists and numbers: safe for `torch.load(weights_only=True)` and JSON."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.params).items()}
        return {
            "architecture": self.architecture,
            "params": params,
            "input_shape": list(self.input_shape),
            "output_size": self.output_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`."""
        spec = ARCHITECTURES[data["architecture"]]
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in data["params"].items()}
        return cls(
            architecture=data["architecture"],
            params=spec.params_type(**params),
            input_shape=tuple(data["input_shape"]),
            output_size=int(data["output_size"]),
        )
