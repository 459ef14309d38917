"""Messages the client builds and reads: requests from Python values (protobuf objects or
their JSON dicts, arrays or tensors), and Predict's and a job's answers as Python values."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb


def short_names(enum: Any) -> dict[str, int]:
    """A proto enum's values by their short names, without the unspecified 0, in the
    contract's order: ExportFormat -> {"torchscript": 1, "onnx": 2}."""
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    return {name.removeprefix(prefix).lower(): value for name, value in enum.items() if value}


OUTPUTS = short_names(pb.PredictOutput)
EXPORT_FORMATS = short_names(pb.ExportFormat)
IMPORT_FORMATS = short_names(pb.ImportFormat)
JOB_STATES = short_names(pb.JobState)


@dataclass(frozen=True)
class PredictResult:
    """Predict's answer as arrays; fields are None when not asked for.

    Attributes:
        model_name, version, runtime: who answered.
        device: the ONNX Runtime provider or torch device that ran it.
        batch_sizes: sizes of the model runs that served the request (dynamic batching).
        raw: [n, out] raw outputs (logits or regression values).
        probabilities: [n, classes] softmax probabilities.
        top_indices, top_probabilities: [n, k], best class first.
        top_labels: the class names of `top_indices`.
    """

    model_name: str
    version: int
    runtime: str
    device: str
    batch_sizes: list[int]
    raw: np.ndarray | None
    probabilities: np.ndarray | None
    top_indices: np.ndarray | None
    top_probabilities: np.ndarray | None
    top_labels: list[list[str]] | None


def message(value: Any, cls: type) -> Any:
    """A message as given, or built from its protobuf-JSON dict form."""
    return value if isinstance(value, Message) else json_format.ParseDict(value, cls())


def dataset_ref(dataset: str | None, split: str, source: Any) -> pb.DatasetRef:
    """A dataset by name, or (with `source`) files under the server's data roots."""
    if source is None:
        return pb.DatasetRef(name=dataset or "digits", split=split)
    if dataset:
        raise ValueError("give a dataset name or a source, not both")
    return pb.DatasetRef(split=split, source=message(source, pb.DataSource))


def predict_request(
    model_name: str,
    inputs: Any,
    version: int,
    outputs: Iterable[str],
    top_k: int,
    runtime: str,
    images: Iterable[bytes] = (),
) -> pb.PredictRequest:
    request = pb.PredictRequest(
        model_name=model_name,
        version=version,
        outputs=[OUTPUTS[o] for o in outputs],
        top_k=top_k,
        runtime=runtime,
        images=list(images),
    )
    if inputs is not None:
        request.inputs.CopyFrom(tensors.encode(as_array(inputs)))
    return request


def predict_result(response: pb.PredictResponse) -> PredictResult:
    has_top = len(response.top_k) > 0
    return PredictResult(
        model_name=response.model_name,
        version=response.version,
        runtime=response.runtime,
        device=response.device,
        batch_sizes=list(response.batch_sizes),
        raw=tensors.decode(response.raw) if response.HasField("raw") else None,
        probabilities=(
            tensors.decode(response.probabilities) if response.HasField("probabilities") else None
        ),
        top_indices=np.array([list(t.indices) for t in response.top_k]) if has_top else None,
        top_probabilities=(
            np.array([list(t.probabilities) for t in response.top_k]) if has_top else None
        ),
        top_labels=[list(t.labels) for t in response.top_k] if has_top else None,
    )


def as_array(data: Any) -> np.ndarray:
    """NumPy arrays pass through; torch tensors (or anything array-like) are converted."""
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def history_rows(history: Iterable[pb.EpochMetrics]) -> list[dict[str, Any]]:
    """Learning curves as one flat dict per epoch: epoch, train_loss, val_loss,
    train_<metric>, val_<metric>, learning_rate, samples_per_second, seconds."""
    return [
        {
            "epoch": m.epoch,
            "train_loss": m.train_loss,
            "val_loss": m.val_loss if m.HasField("val_loss") else None,
            **{f"train_{k}": v for k, v in m.train_metrics.items()},
            **{f"val_{k}": v for k, v in m.val_metrics.items()},
            "learning_rate": m.learning_rate,
            "samples_per_second": m.samples_per_second,
            "seconds": m.seconds,
        }
        for m in history
    ]


def model_spec(
    architecture: str, hidden_sizes: Iterable[int], channels: Iterable[int], dropout: float
) -> pb.ModelSpec:
    """The ModelSpec of a built-in MLP or CNN from the train() shortcuts."""
    if architecture == "mlp":
        return pb.ModelSpec(mlp=pb.MLPSpec(hidden_sizes=list(hidden_sizes), dropout=dropout))
    if architecture == "cnn":
        return pb.ModelSpec(cnn=pb.CNNSpec(channels=list(channels), dropout=dropout))
    raise ValueError(f"architecture={architecture!r}: use 'mlp', 'cnn' or model=")


def architecture_spec(value: Any) -> pb.ModelSpec:
    """A ModelSpec as given (a message or its JSON dict), or from a short name: "mlp" and
    "cnn" with their defaults, "torchvision:NAME" or "plugin:NAME"."""
    if not isinstance(value, str):
        return message(value, pb.ModelSpec)
    kind, _, name = value.partition(":")
    if kind in ("mlp", "cnn") and not name:
        return model_spec(kind, (), (), 0.0)
    if kind == "torchvision" and name:
        return pb.ModelSpec(torchvision=pb.TorchvisionSpec(name=name))
    if kind == "plugin" and name:
        return pb.ModelSpec(plugin=pb.PluginModelSpec(name=name))
    raise ValueError(f"architecture={value!r}: use mlp, cnn, torchvision:NAME or plugin:NAME")


def import_format(path: str, format: str | None) -> int:
    """The ImportFormat of a file: as named, or .onnx for ONNX."""
    if format is None:
        if not path.lower().endswith(".onnx"):
            raise ValueError(
                f"{path}: give the format ({', '.join(IMPORT_FORMATS)}); only .onnx is guessed"
            )
        format = "onnx"
    if format not in IMPORT_FORMATS:
        raise ValueError(f"format={format!r}: must be one of {', '.join(IMPORT_FORMATS)}")
    return IMPORT_FORMATS[format]
