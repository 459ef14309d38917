"""Conversions between the v2 protocol's HTTP/JSON bodies (with the binary tensor data
extension) and the data plane's values."""

import base64
import json
import math
from typing import Any

import numpy as np

from torchwire.service.app.inference_types import (
    BYTES,
    DATATYPES,
    DTYPES,
    SHM_OFFSET,
    SHM_REGION,
    SHM_SIZE,
    InferInput,
    InferRequest,
    InferResponse,
    ModelConfiguration,
    ModelMetadata,
    Raw,
    RequestedOutput,
    TensorData,
    TensorSpec,
    VersionReport,
    non_negative,
    window_of,
)
from torchwire.service.app.open_inference import is_decimal
from torchwire.service.app.statistics import Duration
from torchwire.service.errors import FailedPrecondition, InvalidArgument, Summary, counted

HEADER_LENGTH = "inference-header-content-length"
"""The binary data extension's header: how many bytes of the body are JSON."""
BINARY_SIZE = "binary_data_size"
TAKEN = (SHM_REGION, SHM_OFFSET, SHM_SIZE, BINARY_SIZE, "binary_data")
"""Parameters this front door takes; the data plane judges the others."""


def _others(parameters: dict[str, Any]) -> dict[str, object]:
    return {k: v for k, v in parameters.items() if k not in TAKEN}


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument.field(field, value, "must be a JSON object")
    return value


def parse_json(body: bytes, field: str = "body") -> Any:
    """A JSON document.

    Raises:
        InvalidArgument: the bytes are not JSON.
    """
    try:
        return json.loads(body or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        why = "nests too deeply" if isinstance(err, RecursionError) else f"is not JSON: {err}"
        raise InvalidArgument.field(field, counted(len(body), "byte"), why) from err


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value; send non-finite values as binary data")


def infer_request(model: str, version: str, body: bytes, header_length: str | None) -> InferRequest:
    """An infer request's body (JSON, then binary tensors when `header_length` is given) as
    the data plane's request."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not is_decimal(header_length) or int(header_length) > len(body):
            raise InvalidArgument.field(
                "Inference-Header-Content-Length",
                header_length,
                f"must be the JSON's length, at most the body's {len(body)} bytes",
            )
        header, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    document = _object(parse_json(header), "body")
    parameters = _object(document.get("parameters", {}), "parameters")
    tensors = document.get("inputs")
    if not isinstance(tensors, list):
        raise InvalidArgument.field("inputs", tensors, "must be a list of tensors")
    inputs, offset = [], 0
    for index, tensor in enumerate(tensors):
        parsed, used = _input(_object(tensor, f"inputs[{index}]"), index, binary[offset:])
        inputs.append(parsed)
        offset += used
    if offset != len(binary):
        raise InvalidArgument.field(
            "Inference-Header-Content-Length",
            header_length,
            f"leaves {len(binary)} binary bytes, but the inputs' binary_data_size add to {offset}",
        )
    all_binary = parameters.get("binary_data_output") is True
    requested = document.get("outputs", [])
    if not isinstance(requested, list):
        raise InvalidArgument.field("outputs", requested, "must be a list of outputs")
    outputs = []
    for index, output in enumerate(requested):
        output = _object(output, f"outputs[{index}]")
        output_parameters = _object(output.get("parameters", {}), f"outputs[{index}].parameters")
        binary_wanted = output_parameters.get("binary_data", all_binary) is True
        outputs.append(
            RequestedOutput(
                str(output.get("name", "")),
                window_of(output_parameters, f"outputs[{index}].parameters"),
                binary_wanted,
                _others(output_parameters),
            )
        )
    request_id = document.get("id", "")
    parameters = {k: v for k, v in parameters.items() if k != "binary_data_output"}
    return InferRequest(model, version, str(request_id), inputs, outputs, all_binary, parameters)


def _input(tensor: dict[str, Any], index: int, binary: memoryview) -> tuple[InferInput, int]:
    """One input tensor, and how many binary bytes it took."""
    field = f"inputs[{index}]"
    name, datatype, shape = tensor.get("name", ""), tensor.get("datatype", ""), tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidArgument.field(f"{field}.shape", shape, "must be a list of integers")
    if datatype not in DATATYPES:
        raise InvalidArgument.field(
            f"{field}.datatype", datatype, f"must be one of {list(DATATYPES)}"
        )
    parameters = _object(tensor.get("parameters", {}), f"{field}.parameters")
    data: TensorData | None = window_of(parameters, f"{field}.parameters")
    used = 0
    if data is None and BINARY_SIZE in parameters:
        used = non_negative(parameters[BINARY_SIZE], f"{field}.parameters.{BINARY_SIZE}")
        if used > len(binary):
            raise InvalidArgument.field(
                f"{field}.parameters.{BINARY_SIZE}",
                used,
                f"only {len(binary)} binary bytes are left in the body",
            )
        data = Raw(binary[:used], f"{field}.parameters.{BINARY_SIZE}")
    if data is None:
        data = _json_data(tensor.get("data"), datatype, tuple(shape), field)
    return InferInput(str(name), datatype, tuple(shape), data, _others(parameters)), used


def _json_data(values: Any, datatype: str, shape: tuple[int, ...], field: str) -> TensorData:
    """A tensor's JSON `data` (flat or nested, row-major)."""
    if values is None:
        raise InvalidArgument.field(
            f"{field}.data", None, "is missing (and no binary data or shared memory is named)"
        )
    flat = np.asarray(values, dtype=object).ravel().tolist() if isinstance(values, list) else None
    expected = math.prod(shape) if all(d >= 0 for d in shape) else -1
    if flat is None or len(flat) != expected:
        count = Summary("not a list") if flat is None else counted(len(flat), "value")
        raise InvalidArgument.field(f"{field}.data", count, f"shape {list(shape)} needs {expected}")
    if datatype == BYTES:
        return [_element(v, f"{field}.data[{i}]") for i, v in enumerate(flat)]
    try:
        return np.asarray(flat, dtype=DTYPES[datatype]).reshape(shape)
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidArgument.field(
            f"{field}.data", flat[:3], f"are not {datatype}: {err}"
        ) from err


def _element(value: Any, field: str) -> bytes:
    """A BYTES element: a string (UTF-8), or {"b64": "..."} for binary files."""
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError as err:
            raise InvalidArgument.field(field, value, f"is not text: {err.reason}") from err
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as err:  # binascii.Error, or a non-ASCII character
            raise InvalidArgument.field(field, "b64", f"is not base64: {err}") from err
    raise InvalidArgument.field(field, value, 'must be a string or {"b64": "..."}')


def infer_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary outputs follow it."""
    outputs, chunks = [], []
    for output in response.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.written is not None:
            entry["parameters"] = {
                SHM_REGION: output.written.region,
                SHM_OFFSET: output.written.offset,
                SHM_SIZE: output.written.byte_size,
            }
        elif output.binary:
            assert output.data is not None
            chunks.append(output.data.tobytes())
            entry["parameters"] = {BINARY_SIZE: len(chunks[-1])}
        else:
            assert output.data is not None
            entry["data"] = output.data.ravel().tolist()
        outputs.append(entry)
    document = {
        "model_name": response.model,
        "model_version": str(response.version),
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    try:
        header = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as err:
        raise FailedPrecondition(
            "the outputs hold NaN or infinity, which JSON cannot carry; ask for them as "
            'binary data ("parameters": {"binary_data": true})'
        ) from err
    return (header + b"".join(chunks), len(header)) if chunks else (header, None)


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(meta: ModelMetadata) -> dict[str, Any]:
    """A model's metadata as the protocol's JSON."""
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": [_tensor(t) for t in meta.inputs],
        "outputs": [_tensor(t) for t in meta.outputs],
    }


def model_config(config: ModelConfiguration) -> dict[str, Any]:
    """A configuration as Triton's model configuration JSON."""
    batching = config.batching
    device, _, index = config.device.partition(":")
    document: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": batching.max_batch_size if batching.enabled else 0,
        "input": [
            {
                "name": t.name,
                "data_type": f"TYPE_{t.datatype}",
                "format": "FORMAT_NCHW" if config.parameters["image_mode"] else "FORMAT_NONE",
                "dims": list(t.shape[1:]),
            }
            for t in config.inputs
        ],
        "output": [
            {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape[1:])}
            for t in config.outputs
        ],
        "instance_group": [
            {
                "name": config.name,
                "count": 1,
                "kind": "KIND_GPU" if device == "cuda" else "KIND_CPU",
                "gpus": [int(index or 0)] if device == "cuda" else [],
            }
        ],
        "parameters": {k: {"string_value": v} for k, v in config.parameters.items()},
    }
    if batching.enabled:
        document["dynamic_batching"] = {
            "preferred_batch_size": list(batching.bucket_sizes) or [batching.max_batch_size],
            "max_queue_delay_microseconds": int(batching.max_delay_ms * 1000),
            "preserve_ordering": True,
        }
    return document


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def statistics(reports: list[VersionReport], device: str) -> dict[str, Any]:
    """Statistics as the protocol's JSON."""
    kind = "GPU" if device.startswith("cuda") else "CPU"
    index = int(device.partition(":")[2] or 0)
    stats_of = []
    for report in reports:
        stats = report.statistics
        stats_of.append(
            {
                "name": report.name,
                "version": str(report.version),
                "last_inference": stats.last_inference_ms,
                "inference_count": stats.inference_count,
                "execution_count": stats.execution_count,
                "inference_stats": {
                    name: _duration(getattr(stats, name))
                    for name in (
                        "success",
                        "fail",
                        "queue",
                        "compute_input",
                        "compute_infer",
                        "compute_output",
                    )
                }
                | {"cache_hit": _duration(Duration()), "cache_miss": _duration(Duration())},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": _duration(Duration()),
                        "compute_infer": _duration(runs),
                        "compute_output": _duration(Duration()),
                    }
                    for size, runs in sorted(stats.runs.items())
                ],
                "memory_usage": [{"type": kind, "id": index, "byte_size": report.loaded_bytes}]
                if report.loaded_bytes
                else [],
            }
        )
    return {"model_stats": stats_of}
