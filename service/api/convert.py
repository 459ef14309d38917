"""Conversions between `torchwire.v1` messages and the core's plain types."""

from dataclasses import asdict, fields
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from torchwire.service.core.data import DatasetInfo
from torchwire.service.core.evaluation import EvaluationResult
from torchwire.service.core.inference import Prediction
from torchwire.service.core.models import CNNParams, MLPParams
from torchwire.service.core.training import TrainConfig, TrainSpec
from torchwire.service.errors import InvalidArgument
from torchwire.service.store.layout import check_name
from torchwire.service.store.registry import JOB_STATES, EventRecord, JobRecord, ModelVersionRecord
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

JOB_STATE_TO_PB = {state: pb.JobState.Value(f"JOB_STATE_{state.upper()}") for state in JOB_STATES}
JOB_STATE_FROM_PB = {value: state for state, value in JOB_STATE_TO_PB.items()}
_PARAMS = {"mlp": (MLPParams, pb.MLPSpec), "cnn": (CNNParams, pb.CNNSpec)}


def decode_tensor(field: str, tensor: pb.Tensor) -> np.ndarray:
    """Decodes a request tensor, naming `field` in the error when it is malformed."""
    try:
        return tensors.decode(tensor)
    except ValueError as err:
        raise InvalidArgument(f"{field}: {err}") from err


def timestamp(seconds: float | None) -> Timestamp | None:
    """A Timestamp from Unix seconds (None stays None)."""
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _present(message: Message) -> dict[str, Any]:
    """The fields a client set: optional ones when present, others when non-default."""
    values = {}
    for descriptor in message.DESCRIPTOR.fields:
        name = descriptor.name
        if descriptor.has_presence and descriptor.message_type is None:
            if message.HasField(name):
                values[name] = getattr(message, name)
        elif getattr(message, name):
            values[name] = getattr(message, name)
    return values


def train_spec(request: pb.TrainRequest) -> TrainSpec:
    """Validates a TrainRequest's own fields and builds the core spec; defaults fill the gaps."""
    check_name("model_name", request.model_name)
    if not request.dataset.name:
        raise InvalidArgument.field("dataset.name", "", "is required (e.g. 'digits')")
    architecture = request.model.WhichOneof("architecture") or "mlp"
    params_type, _ = _PARAMS[architecture]
    given = _present(getattr(request.model, architecture))
    params = params_type(
        **{k: tuple(v) if not isinstance(v, float) else v for k, v in given.items()}
    )
    config_fields = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(
        **{k: v for k, v in _present(request.config).items() if k in config_fields}
    )
    return TrainSpec(
        model_name=request.model_name,
        dataset=request.dataset.name,
        split=request.dataset.split or "train",
        architecture=architecture,
        params=params,
        config=config,
    )


def train_request(spec_dict: dict[str, Any]) -> pb.TrainRequest:
    """The TrainRequest of a recorded spec, with every default filled in."""
    spec = TrainSpec.from_dict(spec_dict)
    _, message_type = _PARAMS[spec.architecture]
    return pb.TrainRequest(
        model_name=spec.model_name,
        dataset=pb.DatasetRef(name=spec.dataset, split=spec.split),
        model=pb.ModelSpec(**{spec.architecture: message_type(**asdict(spec.params))}),
        config=pb.TrainingConfig(**asdict(spec.config)),
    )


def epoch_metrics(payload: dict[str, Any]) -> pb.EpochMetrics:
    return json_format.ParseDict(payload, pb.EpochMetrics())


def job(record: JobRecord, history: list[dict[str, Any]]) -> pb.Job:
    """A Job message from its registry row and learning curves."""
    return pb.Job(
        id=record.id,
        state=JOB_STATE_TO_PB[record.state],
        request=train_request(record.request),
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        history=[epoch_metrics(h) for h in history],
        model_version=record.model_version,
        error=record.error,
        device=record.device,
        best_epoch=record.best_epoch,
    )


def job_event(record: EventRecord) -> pb.JobEvent:
    """A JobEvent from the log; payload field names match the oneof member's fields."""
    event = pb.JobEvent(job_id=record.job_id, seq=record.seq, time=timestamp(record.time))
    member = getattr(event, record.kind)
    member.SetInParent()
    json_format.ParseDict(record.payload, member)
    return event


def model_version(record: ModelVersionRecord, with_history: bool) -> pb.ModelVersion:
    meta = record.metadata
    return pb.ModelVersion(
        version=record.version,
        created_at=timestamp(record.created_at),
        job_id=record.job_id,
        task=meta["task"],
        input_shape=meta["input_shape"],
        input_dtype=meta["input_dtype"],
        output_size=meta["output_size"],
        classes=meta["classes"],
        metrics=meta["metrics"],
        training=train_request(meta["training"]),
        best_epoch=meta["best_epoch"],
        history=[epoch_metrics(h) for h in meta["history"]] if with_history else [],
    )


def model(name: str, versions: list[ModelVersionRecord], with_history: bool) -> pb.Model:
    return pb.Model(
        name=name,
        versions=[model_version(v, with_history) for v in versions],
        latest_version=versions[-1].version,
    )


def dataset(info: DatasetInfo) -> pb.Dataset:
    return pb.Dataset(
        name=info.name,
        builtin=info.builtin,
        splits=[pb.DatasetSplit(split=s, num_samples=n) for s, n in info.splits.items()],
        feature_shape=info.feature_shape,
        feature_dtype=info.feature_dtype,
        classes=info.classes,
        target_shape=info.target_shape,
        task=info.task,
    )


def evaluation(record: ModelVersionRecord, result: EvaluationResult) -> pb.EvaluateResponse:
    response = pb.EvaluateResponse(
        model_name=record.name,
        version=record.version,
        num_samples=result.num_samples,
        loss=result.loss,
        metrics=result.metrics,
        per_class=[pb.ClassMetrics(**asdict(c)) for c in result.per_class],
    )
    if result.confusion_matrix is not None:
        response.confusion_matrix.CopyFrom(tensors.encode(result.confusion_matrix.numpy()))
    return response


def prediction(record: ModelVersionRecord, result: Prediction) -> pb.PredictResponse:
    response = pb.PredictResponse(
        model_name=record.name, version=record.version, runtime=result.runtime
    )
    if result.raw is not None:
        response.raw.CopyFrom(tensors.encode(result.raw))
    if result.probabilities is not None:
        response.probabilities.CopyFrom(tensors.encode(result.probabilities))
    if result.top_indices is not None and result.top_probabilities is not None:
        classes = record.metadata["classes"]
        response.top_k.extend(
            pb.TopK(indices=indices, labels=[classes[i] for i in indices], probabilities=probs)
            for indices, probs in zip(
                result.top_indices.tolist(), result.top_probabilities.tolist(), strict=True
            )
        )
    return response
