"""Conversions between the v2 protocol's gRPC messages and the data plane's values."""

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.service.app.inference_types import (
    BYTES,
    DATATYPES,
    DTYPES,
    SHM_OFFSET,
    SHM_PARAMETERS,
    SHM_REGION,
    SHM_SIZE,
    InferInput,
    InferRequest,
    InferResponse,
    ModelConfiguration,
    Raw,
    RequestedOutput,
    TensorData,
    VersionReport,
    window_of,
)
from torchwire.service.app.statistics import Duration
from torchwire.service.errors import InvalidArgument

#: v2 datatype -> the typed-contents field that carries it.
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def parameter(value: v2.InferParameter | v2.ModelRepositoryParameter) -> Any:
    """A parameter's value, whichever of its types is set."""
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


def _values(parameters: Mapping[str, v2.InferParameter]) -> dict[str, object]:
    """A parameter map as plain values."""
    return {name: parameter(p) for name, p in parameters.items()}


def infer_request(request: v2.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest as the data plane's request."""
    raw = list(request.raw_input_contents)
    inputs = []
    for index, tensor in enumerate(request.inputs):
        data: TensorData | None = window_of(
            _values(tensor.parameters), f"inputs[{index}].parameters"
        )
        if data is None and request.raw_input_contents:
            if tensor.HasField("contents"):
                raise InvalidArgument.field(
                    f"inputs[{index}].contents",
                    "set",
                    "give raw_input_contents or typed contents, not both",
                )
            position = len(request.raw_input_contents) - len(raw)
            data = Raw(raw.pop(0) if raw else b"", f"raw_input_contents[{position}]")
        if data is None:
            data = _typed(tensor, index)
        inputs.append(
            InferInput(
                tensor.name, tensor.datatype, tuple(tensor.shape), data, _others(tensor.parameters)
            )
        )
    if raw and len(request.inputs) == 1:
        raise InvalidArgument.field(
            "raw_input_contents",
            len(request.raw_input_contents),
            "must hold one entry per input not in shared memory",
        )
    outputs = [
        RequestedOutput(
            o.name,
            window_of(_values(o.parameters), f"outputs[{index}].parameters"),
            parameters=_others(o.parameters),
        )
        for index, o in enumerate(request.outputs)
    ]
    return InferRequest(
        request.model_name,
        request.model_version,
        request.id,
        inputs,
        outputs,
        parameters=_others(request.parameters),
    )


def _others(parameters: Mapping[str, v2.InferParameter]) -> dict[str, object]:
    """The parameters other than those of shared memory, for the data plane to judge."""
    return {k: v for k, v in _values(parameters).items() if k not in SHM_PARAMETERS}


def _typed(tensor: v2.ModelInferRequest.InferInputTensor, index: int) -> TensorData:
    """A tensor's typed contents, checked against its shape."""
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        why = (
            "is carried only in raw_input_contents"
            if tensor.datatype in DATATYPES
            else f"must be one of {list(DATATYPES)}"
        )
        raise InvalidArgument.field(f"inputs[{index}].datatype", tensor.datatype, why)
    values = getattr(tensor.contents, field)
    expected = math.prod(tensor.shape) if all(d >= 0 for d in tensor.shape) else -1
    if len(values) != expected:
        raise InvalidArgument.field(
            f"inputs[{index}].shape",
            list(tensor.shape),
            f"holds {len(values)} values in inputs[{index}].contents.{field}",
        )
    if tensor.datatype == BYTES:
        return list(values)
    return np.asarray(values, dtype=DTYPES[tensor.datatype]).reshape(tuple(tensor.shape))


def infer_response(response: InferResponse) -> v2.ModelInferResponse:
    """The data plane's response as a ModelInferResponse (raw contents)."""
    message = v2.ModelInferResponse(
        model_name=response.model, model_version=str(response.version), id=response.id
    )
    for output in response.outputs:
        tensor = message.outputs.add(
            name=output.name, datatype=output.datatype, shape=list(output.shape)
        )
        if output.written is not None:
            tensor.parameters[SHM_REGION].string_param = output.written.region
            tensor.parameters[SHM_SIZE].int64_param = output.written.byte_size
            tensor.parameters[SHM_OFFSET].int64_param = output.written.offset
            # Every output has an entry, empty for one in shared memory: clients find an
            # output's contents by its position.
            message.raw_output_contents.append(b"")
        else:
            assert output.data is not None
            message.raw_output_contents.append(output.data.tobytes())
    return message


def model_config(config: ModelConfiguration) -> v2.ModelConfigResponse:
    """A configuration as Triton's ModelConfig."""
    types = v2.DataType
    batching = config.batching
    device, _, index = config.device.partition(":")
    message = v2.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=batching.max_batch_size if batching.enabled else 0,
        input=[
            v2.ModelInput(
                name=t.name,
                data_type=types.Value(f"TYPE_{t.datatype}"),
                format=v2.ModelInput.FORMAT_NCHW
                if config.parameters["image_mode"]
                else v2.ModelInput.FORMAT_NONE,
                dims=list(t.shape[1:]),
            )
            for t in config.inputs
        ],
        output=[
            v2.ModelOutput(
                name=t.name, data_type=types.Value(f"TYPE_{t.datatype}"), dims=list(t.shape[1:])
            )
            for t in config.outputs
        ],
        instance_group=[
            v2.ModelInstanceGroup(
                name=config.name,
                count=1,
                kind=v2.ModelInstanceGroup.KIND_GPU
                if device == "cuda"
                else v2.ModelInstanceGroup.KIND_CPU,
                gpus=[int(index or 0)] if device == "cuda" else [],
            )
        ],
        parameters={k: v2.ModelParameter(string_value=v) for k, v in config.parameters.items()},
    )
    if batching.enabled:
        message.dynamic_batching.CopyFrom(
            v2.ModelDynamicBatching(
                preferred_batch_size=list(batching.bucket_sizes) or [batching.max_batch_size],
                max_queue_delay_microseconds=int(batching.max_delay_ms * 1000),
                preserve_ordering=True,
            )
        )
    return v2.ModelConfigResponse(config=message)


def _duration(duration: Duration) -> v2.StatisticDuration:
    return v2.StatisticDuration(count=duration.count, ns=duration.ns)


def statistics(reports: list[VersionReport], device: str) -> v2.ModelStatisticsResponse:
    """Statistics as the protocol's ModelStatisticsResponse."""
    response = v2.ModelStatisticsResponse()
    kind = "GPU" if device.startswith("cuda") else "CPU"
    index = int(device.partition(":")[2] or 0)
    for report in reports:
        stats = report.statistics
        response.model_stats.add(
            name=report.name,
            version=str(report.version),
            last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count,
            execution_count=stats.execution_count,
            inference_stats=v2.InferStatistics(
                success=_duration(stats.success),
                fail=_duration(stats.fail),
                queue=_duration(stats.queue),
                compute_input=_duration(stats.compute_input),
                compute_infer=_duration(stats.compute_infer),
                compute_output=_duration(stats.compute_output),
            ),
            batch_stats=[
                v2.InferBatchStatistics(batch_size=size, compute_infer=_duration(runs))
                for size, runs in sorted(stats.runs.items())
            ],
            memory_usage=[v2.MemoryUsage(type=kind, id=index, byte_size=report.loaded_bytes)]
            if report.loaded_bytes
            else [],
        )
    return response
