"""Conversions between `torchwire.v1` messages and the core's plain types."""

from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from torchwire.service.app.catalog import ModelView
from torchwire.service.app.importing import STATE_DICT, ImportRequest
from torchwire.service.app.prediction import LoadedRuntime
from torchwire.service.app.serving import BatchingInForce
from torchwire.service.core.architectures import (
    CNNParams,
    MLPParams,
    PluginParams,
    TorchvisionParams,
)
from torchwire.service.core.batching import BatchingConfig
from torchwire.service.core.buckets import check_bucket_sizes
from torchwire.service.core.datasets import DatasetInfo
from torchwire.service.core.distributed import DistributedConfig
from torchwire.service.core.evaluation import EvaluationResult
from torchwire.service.core.formats import ONNX, TORCHSCRIPT, runtimes_of
from torchwire.service.core.jobstates import JOB_STATES
from torchwire.service.core.records import (
    EventRecord,
    ImportedFile,
    JobRecord,
    ModelVersionRecord,
    check_name,
)
from torchwire.service.core.runtimes import Prediction
from torchwire.service.core.sources import FileSource
from torchwire.service.core.spec import TrainConfig, TrainSpec
from torchwire.service.errors import InvalidArgument
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

JOB_STATE_TO_PB = {state: pb.JobState.Value(f"JOB_STATE_{state.upper()}") for state in JOB_STATES}
JOB_STATE_FROM_PB = {value: state for state, value in JOB_STATE_TO_PB.items()}
_PARAMS = {
    "mlp": (MLPParams, pb.MLPSpec),
    "cnn": (CNNParams, pb.CNNSpec),
    "torchvision": (TorchvisionParams, pb.TorchvisionSpec),
    "plugin": (PluginParams, pb.PluginModelSpec),
}


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


def _whole(value: Any) -> Any:
    """Struct numbers are doubles: whole ones become ints, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _as_dict(field: str, message: Message, **options: Any) -> dict[str, Any]:
    """The message as JSON-like values; what JSON cannot hold (a NaN or infinite Struct
    number) is the client's invalid argument."""
    try:
        return json_format.MessageToDict(message, **options)
    except (json_format.Error, ValueError) as err:  # NaN raises a plain ValueError
        raise InvalidArgument.field(
            field, str(message)[:60], f"is not JSON-representable: {err}"
        ) from None


def model_params(spec: pb.ModelSpec) -> tuple[str, Any]:
    """The architecture's name and parameters; unset means an MLP with defaults."""
    architecture = spec.WhichOneof("architecture") or "mlp"
    params_type, _ = _PARAMS[architecture]
    message = getattr(spec, architecture)
    if architecture == "plugin":
        options = _whole(_as_dict("model.plugin.options", message.options))
        return architecture, PluginParams(message.name, options)
    given = _present(message)
    return architecture, params_type(
        **{k: tuple(v) if not isinstance(v, float | bool | str) else v for k, v in given.items()}
    )


def file_source(ref: pb.DatasetRef) -> FileSource | None:
    """The files a DatasetRef names, None when it names a dataset."""
    if not ref.HasField("source"):
        if not ref.name:
            raise InvalidArgument.field(
                "dataset.name", "", "is required (e.g. 'digits'), or give dataset.source"
            )
        return None
    source = ref.source
    return FileSource(
        format=source.format,
        path=source.path,
        label_pattern=source.label_pattern,
        target_columns=tuple(source.target_columns),
        feature_columns=tuple(source.feature_columns),
        task=source.task,
    )


def transform_specs(field: str, messages: Any) -> tuple[dict[str, Any], ...]:
    """Transform messages as the core's one-key dicts."""
    return tuple(
        _as_dict(f"{field}[{i}]", m, preserving_proto_field_name=True)
        for i, m in enumerate(messages)
    )


def train_spec(request: pb.TrainRequest) -> TrainSpec:
    """Validates a TrainRequest's own fields and builds the core spec; defaults fill the gaps."""
    check_name("model_name", request.model_name)
    source = file_source(request.dataset)
    architecture, params = model_params(request.model)
    config_fields = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(
        **{k: v for k, v in _present(request.config).items() if k in config_fields}
    )
    init_from = None
    if request.HasField("init_from"):
        check_name("init_from.name", request.init_from.name)
        if request.init_from.version < 0:
            raise InvalidArgument.field(
                "init_from.version", request.init_from.version, "must be >= 0 (0: the latest)"
            )
        init_from = (request.init_from.name, request.init_from.version)
    parallel = None
    if request.HasField("distributed"):
        given = request.distributed
        parallel = DistributedConfig(
            given.nproc_per_node,
            given.nnodes,
            given.backend,
            given.rdzv_endpoint,
            given.max_restarts,
        )
    return TrainSpec(
        model_name=request.model_name,
        dataset=request.dataset.name,
        split=request.dataset.split or "train",
        architecture=architecture,
        params=params,
        config=config,
        source=source,
        transforms=transform_specs("transforms", request.transforms),
        eval_transforms=transform_specs("eval_transforms", request.eval_transforms),
        init_from=init_from,
        distributed=parallel,
    )


def _transforms(specs: Any) -> list[pb.Transform]:
    return [json_format.ParseDict(spec, pb.Transform()) for spec in specs]


def train_request(spec: TrainSpec) -> pb.TrainRequest:
    """The TrainRequest of a recorded spec, with every default filled in."""
    _, message_type = _PARAMS[spec.architecture]
    dataset = pb.DatasetRef(name=spec.dataset, split=spec.split)
    if spec.source is not None:
        dataset.source.CopyFrom(pb.DataSource(**asdict(spec.source)))
    request = pb.TrainRequest(
        model_name=spec.model_name,
        dataset=dataset,
        model=pb.ModelSpec(
            **{spec.architecture: json_format.ParseDict(asdict(spec.params), message_type())}
        ),
        config=pb.TrainingConfig(**asdict(spec.config)),
        transforms=_transforms(spec.transforms),
        eval_transforms=_transforms(spec.eval_transforms),
    )
    if spec.init_from is not None:
        request.init_from.CopyFrom(pb.ModelRef(name=spec.init_from[0], version=spec.init_from[1]))
    if spec.distributed is not None:
        request.distributed.CopyFrom(pb.DistributedConfig(**asdict(spec.distributed)))
    return request


def epoch_metrics(payload: dict[str, Any]) -> pb.EpochMetrics:
    return json_format.ParseDict(payload, pb.EpochMetrics())


def job(record: JobRecord, history: list[dict[str, Any]]) -> pb.Job:
    """A Job message from its registry row and learning curves."""
    return pb.Job(
        id=record.id,
        state=JOB_STATE_TO_PB[record.state],
        request=train_request(record.spec),
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


FORMAT_TO_PB = {TORCHSCRIPT: pb.EXPORT_FORMAT_TORCHSCRIPT, ONNX: pb.EXPORT_FORMAT_ONNX}
FORMAT_FROM_PB = {value: fmt for fmt, value in FORMAT_TO_PB.items()}


def export_format(field: str, value: int) -> str:
    """The core's name of an ExportFormat, or INVALID_ARGUMENT naming the field."""
    if value not in FORMAT_FROM_PB:
        raise InvalidArgument.field(
            field, value, "must be EXPORT_FORMAT_TORCHSCRIPT (1) or EXPORT_FORMAT_ONNX (2)"
        )
    return FORMAT_FROM_PB[value]


def artifact(fmt: str, meta: dict[str, Any]) -> pb.Artifact:
    return pb.Artifact(
        format=FORMAT_TO_PB[fmt],
        file_name=meta["file_name"],
        size_bytes=meta["size_bytes"],
        sha256=meta["sha256"],
        opset=meta["opset"],
        max_abs_diff=meta["max_abs_diff"],
        parity_batch_sizes=meta["parity_batch_sizes"],
        created_at=timestamp(meta["created_at"]),
        imported=meta.get("imported", False),
    )


IMPORT_FORMAT_TO_PB = {
    ONNX: pb.IMPORT_FORMAT_ONNX,
    TORCHSCRIPT: pb.IMPORT_FORMAT_TORCHSCRIPT,
    STATE_DICT: pb.IMPORT_FORMAT_STATE_DICT,
}
IMPORT_FORMAT_FROM_PB = {value: fmt for fmt, value in IMPORT_FORMAT_TO_PB.items()}


def import_request(header: pb.ImportHeader) -> ImportRequest:
    """An ImportHeader in core terms (the importer validates the values)."""
    if header.format not in IMPORT_FORMAT_FROM_PB:
        raise InvalidArgument.field(
            "format",
            header.format,
            "must be IMPORT_FORMAT_ONNX (1), IMPORT_FORMAT_TORCHSCRIPT (2) or "
            "IMPORT_FORMAT_STATE_DICT (3)",
        )
    architecture, params = (
        model_params(header.architecture) if header.HasField("architecture") else ("", None)
    )
    return ImportRequest(
        model_name=header.model_name,
        format=IMPORT_FORMAT_FROM_PB[header.format],
        file_name=header.file_name.replace("\\", "/").rpartition("/")[2],
        size_bytes=header.size_bytes,
        input_shape=tuple(header.input_shape),
        input_dtype=header.input_dtype,
        task=header.task,
        classes=tuple(header.classes),
        eval_transforms=transform_specs("eval_transforms", header.eval_transforms),
        image_mode=header.image_mode,
        architecture=architecture,
        params=params,
        output_size=header.output_size,
    )


def imported_file(source: ImportedFile) -> pb.ImportedFile:
    return pb.ImportedFile(
        format=IMPORT_FORMAT_TO_PB[source.format],
        file_name=source.file_name,
        sha256=source.sha256,
        size_bytes=source.size_bytes,
    )


def batching(in_force: BatchingInForce) -> pb.BatchingConfig:
    return pb.BatchingConfig(
        server_default=in_force.server_default,
        own_bucket_sizes=in_force.own_bucket_sizes,
        **asdict(in_force.config),
    )


def batching_config(message: pb.BatchingConfig) -> BatchingConfig:
    """Validates a BatchingConfig message."""
    if not 1 <= message.max_batch_size <= 65536:
        raise InvalidArgument.field(
            "batching.max_batch_size", message.max_batch_size, "must be in [1, 65536]"
        )
    if not 0 <= message.max_delay_ms <= 1000:
        raise InvalidArgument.field(
            "batching.max_delay_ms", message.max_delay_ms, "must be in [0, 1000]"
        )
    sizes = check_bucket_sizes(message.bucket_sizes, "batching.bucket_sizes")
    own = bool(sizes) or message.own_bucket_sizes
    return BatchingConfig(
        message.enabled, message.max_batch_size, message.max_delay_ms, sizes if own else None
    )


def loaded_runtime(loaded: LoadedRuntime) -> pb.LoadedRuntime:
    return pb.LoadedRuntime(
        runtime=loaded.runtime,
        placement=loaded.placement,
        size_bytes=loaded.size_bytes,
        load_seconds=loaded.load_seconds,
        buckets=[
            pb.Bucket(batch_size=b.batch_size, warmup_seconds=b.warmup_seconds)
            for b in loaded.buckets
        ],
        bucket_device_bytes=loaded.bucket_device_bytes,
    )


def model_version(
    record: ModelVersionRecord,
    with_history: bool,
    artifacts: dict[str, dict[str, Any]],
    loaded: Sequence[LoadedRuntime] = (),
) -> pb.ModelVersion:
    meta = record.metadata
    return pb.ModelVersion(
        version=record.version,
        created_at=timestamp(record.created_at),
        job_id=record.job_id,
        task=meta.task,
        input_shape=meta.input_shape,
        input_dtype=meta.input_dtype,
        output_size=meta.output_size,
        classes=meta.classes,
        metrics=meta.metrics,
        training=train_request(meta.training) if meta.training is not None else None,
        best_epoch=meta.best_epoch,
        history=[epoch_metrics(h) for h in meta.history] if with_history else [],
        artifacts=[artifact(fmt, m) for fmt, m in artifacts.items()],
        eval_transforms=_transforms(meta.eval_transforms),
        image_mode=meta.image_mode,
        imported=imported_file(meta.imported) if meta.imported is not None else None,
        runtimes=runtimes_of(bool(record.checkpoint), artifacts),
        loaded=[loaded_runtime(runtime) for runtime in loaded],
    )


def model(view: ModelView, with_history: bool) -> pb.Model:
    return pb.Model(
        name=view.name,
        versions=[
            model_version(
                v, with_history, view.artifacts[v.version], view.loaded.get(v.version, [])
            )
            for v in view.versions
        ],
        latest_version=view.versions[-1].version,
        batching=batching(view.batching),
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
        tensors.fill(response.confusion_matrix, result.confusion_matrix.numpy())
    return response


def prediction(record: ModelVersionRecord, result: Prediction) -> pb.PredictResponse:
    response = pb.PredictResponse(
        model_name=record.name,
        version=record.version,
        runtime=result.runtime,
        device=result.placement,
        batch_sizes=result.batch_sizes,
    )
    if result.raw is not None:
        tensors.fill(response.raw, result.raw)
    if result.probabilities is not None:
        tensors.fill(response.probabilities, result.probabilities)
    if result.top_indices is not None and result.top_probabilities is not None:
        classes = record.metadata.classes
        response.top_k.extend(
            pb.TopK(indices=indices, labels=[classes[i] for i in indices], probabilities=probs)
            for indices, probs in zip(
                result.top_indices.tolist(), result.top_probabilities.tolist(), strict=True
            )
        )
    return response
