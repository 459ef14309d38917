"""Architectures (the MLP, the CNN, torchvision's classifiers and plugins) and the model
config that rebuilds them from a checkpoint."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from torchwire.service.core import plugins
from torchwire.service.errors import InvalidArgument, TorchwireError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


@dataclass(frozen=True)
class MLPParams:
    """Flatten, then (Linear, activation, Dropout) per hidden layer, then a Linear head."""

    hidden_sizes: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    activation: str = "relu"


@dataclass(frozen=True)
class CNNParams:
    """Per channel count a Conv3x3/BatchNorm/ReLU/MaxPool block, then pooling and a head."""

    channels: tuple[int, ...] = (32, 64)
    dropout: float = 0.0
    batch_norm: bool = True


@dataclass(frozen=True)
class TorchvisionParams:
    """A torchvision classification architecture by name, with fresh weights."""

    name: str = ""


@dataclass(frozen=True)
class PluginParams:
    """A `torchwire.models` plugin by name, and the keyword arguments of its factory."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


class MLP(nn.Module):
    """A multi-layer perceptron over flattened inputs."""

    def __init__(self, input_shape: tuple[int, ...], output_size: int, params: MLPParams) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in params.hidden_sizes:
            activation = ACTIVATIONS[params.activation]()
            layers += [nn.Linear(width, hidden), activation, nn.Dropout(params.dropout)]
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
                nn.BatchNorm2d(out_channels) if params.batch_norm else nn.Identity(),
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


def torchvision_model(
    input_shape: tuple[int, ...], output_size: int, params: TorchvisionParams
) -> nn.Module:
    """A torchvision classifier with `output_size` classes whose first convolution takes
    the data's channels."""
    from torchvision import models

    model = models.get_model(params.name, weights=None, num_classes=output_size)
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first[1].in_channels != input_shape[0]:
        parent, _, attribute = first[0].rpartition(".")
        setattr(model.get_submodule(parent), attribute, _conv_like(first[1], input_shape[0]))
    return model


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        conv.bias is not None,
    )


def plugin_model(input_shape: tuple[int, ...], output_size: int, params: PluginParams) -> nn.Module:
    """The module a `torchwire.models` plugin's factory builds."""
    factory = plugins.load(plugins.MODELS, params.name)
    module = factory(input_shape, output_size, **params.options)
    if not isinstance(module, nn.Module):
        raise InvalidArgument.field(
            "model.plugin.name", params.name, f"built a {type(module).__name__}, not an nn.Module"
        )
    return module


def _torchvision_names() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)


def _check_torchvision(params: TorchvisionParams, input_shape: tuple[int, ...]) -> None:
    if params.name not in _torchvision_names():
        raise InvalidArgument.field(
            "model.torchvision.name",
            params.name,
            "is not a torchvision classification model (see torchvision.models.list_models)",
        )
    if len(input_shape) != 3:
        raise InvalidArgument.field(
            "model.torchvision", list(input_shape), "needs image inputs of shape [C, H, W]"
        )


def _check_plugin(params: PluginParams, input_shape: tuple[int, ...]) -> None:
    if params.name not in plugins.names(plugins.MODELS):
        raise InvalidArgument.field(
            "model.plugin.name",
            params.name,
            f"is not an installed model plugin; installed: {plugins.names(plugins.MODELS)}",
        )


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
    if params.activation not in ACTIVATIONS:
        raise InvalidArgument.field(
            "model.mlp.activation", params.activation, f"must be one of {sorted(ACTIVATIONS)}"
        )


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
    "torchvision": Architecture(TorchvisionParams, _check_torchvision, torchvision_model),
    "plugin": Architecture(PluginParams, _check_plugin, plugin_model),
}
Params = MLPParams | CNNParams | TorchvisionParams | PluginParams


@dataclass(frozen=True)
class ModelConfig:
    """All that is needed to rebuild a module: saved in every checkpoint beside its state_dict."""

    architecture: str
    params: Params
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

    def check_forward(self) -> None:
        """Runs a batch of 2 through the architecture on the meta device (no memory, no
        compute), in training mode: the shapes must fit the data.

        Raises:
            InvalidArgument: the module rejects the input shape or gives the wrong output.
        """
        try:
            with torch.device("meta"):
                output = self.build().train()(torch.empty(2, *self.input_shape))
        except TorchwireError:
            raise
        except Exception as err:  # whatever the module raises for a bad shape
            raise InvalidArgument.field(
                "model",
                self.architecture,
                f"does not accept inputs of shape {list(self.input_shape)}: {err}",
            ) from err
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, self.output_size):
            shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise InvalidArgument.field(
                "model",
                self.architecture,
                f"gives {shape} for a batch of 2, not [2, {self.output_size}]",
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
