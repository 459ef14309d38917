"""The Open Inference Protocol's values, whatever carried them (gRPC or HTTP/JSON): requests,
responses, tensor descriptions, and the datatypes and their byte layouts."""

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from torchwire.service.app.shared_memory import Window
from torchwire.service.app.statistics import VersionStatistics
from torchwire.service.core.batching import BatchingConfig
from torchwire.service.errors import InvalidArgument, counted

DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
"""v2 datatype -> NumPy dtype name, for the datatypes torchwire models take or give."""
DATATYPE_OF = {dtype: name for name, dtype in DTYPES.items()}
BYTES = "BYTES"
"""Encoded files (PNG, JPEG), one per element: images for a model trained on them."""
DATATYPES = (*DTYPES, BYTES)
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_SIZE = "shared_memory_byte_size"
SHM_PARAMETERS = (SHM_REGION, SHM_OFFSET, SHM_SIZE)
"""The tensor parameters that name a shared-memory window, in either protocol."""


def datatype_of(dtype_name: str) -> str:
    """The v2 datatype of a NumPy dtype name ("float32" -> "FP32")."""
    return DATATYPE_OF.get(dtype_name, dtype_name)


@dataclass(frozen=True)
class Raw:
    """A tensor's contents as little-endian bytes, as the request carried them."""

    buffer: bytes | memoryview | np.ndarray
    field: str
    """The request field that carried them (for errors)."""


TensorData: TypeAlias = np.ndarray | list[bytes] | Raw | Window
"""Decoded values, BYTES elements, raw bytes, or a shared-memory window."""


@dataclass(frozen=True)
class InferInput:
    """One input tensor of a request."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: TensorData
    parameters: dict[str, object] = field(default_factory=dict)
    """Parameters the front door did not take (it takes those of shared memory and binary
    data); the data plane refuses them."""


@dataclass(frozen=True)
class RequestedOutput:
    """One output a request asks for, with where to write it."""

    name: str
    window: Window | None = None
    """A shared-memory window to write it into instead of the response."""
    binary: bool = False
    """(HTTP) send it as binary data after the JSON, not as a JSON array."""
    parameters: dict[str, object] = field(default_factory=dict)
    """Parameters the front door did not take; the data plane refuses them."""


@dataclass(frozen=True)
class InferRequest:
    """An inference request."""

    model: str
    version: str
    """A decimal version, or empty for the latest."""
    id: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    """Empty asks for every output."""
    binary_outputs: bool = False
    """(HTTP) send the outputs not named in `outputs` as binary data."""
    parameters: dict[str, object] = field(default_factory=dict)
    """Request parameters the front door did not take: `timeout` (microseconds) is
    honoured, others are refused."""


@dataclass(frozen=True)
class InferOutput:
    """One output tensor of a response: its values, or the window they were written to."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None
    written: Window | None = None
    binary: bool = False


@dataclass(frozen=True)
class InferResponse:
    """An inference response."""

    model: str
    version: int
    id: str
    outputs: list[InferOutput]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, datatype and shape (-1: the batch dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def non_negative(value: object, field: str) -> int:
    """`value` as an integer >= 0.

    Raises:
        InvalidArgument: it is not one.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument.field(field, value, "must be a non-negative integer")
    return value


def window_of(parameters: Mapping[str, object], field: str) -> Window | None:
    """The shared-memory window that a tensor's parameters (plain values) name, if any.

    Raises:
        InvalidArgument: a region without a name, or a size or offset that is not an
            integer >= 0.
    """
    if SHM_REGION not in parameters:
        return None
    region = parameters[SHM_REGION]
    if not isinstance(region, str) or not region:
        raise InvalidArgument.field(f"{field}.{SHM_REGION}", region, "must be a region's name")
    size = non_negative(parameters.get(SHM_SIZE), f"{field}.{SHM_SIZE}")
    offset = non_negative(parameters.get(SHM_OFFSET, 0), f"{field}.{SHM_OFFSET}")
    return Window(region, offset, size, field)


def from_raw(raw: Raw, datatype: str, shape: tuple[int, ...]) -> np.ndarray | list[bytes]:
    """Raw contents as an array (a view, no copy), or as BYTES elements.

    Raises:
        InvalidArgument: the byte count does not match the shape, or BYTES elements overrun.
    """
    if datatype == BYTES:
        elements = deserialize_bytes(raw)
        if len(elements) != math.prod(shape):
            raise InvalidArgument.field(
                raw.field,
                counted(len(elements), "element"),
                f"shape {list(shape)} needs {math.prod(shape)}",
            )
        return elements
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    size = len(raw.buffer) if not isinstance(raw.buffer, np.ndarray) else raw.buffer.nbytes
    if size != expected:
        raise InvalidArgument.field(
            raw.field,
            counted(size, "byte"),
            f"has {size} bytes, but shape {list(shape)} of {datatype} needs {expected}",
        )
    return np.frombuffer(raw.buffer, dtype).reshape(shape)


def deserialize_bytes(raw: Raw) -> list[bytes]:
    """BYTES elements from their wire form: each a 4-byte little-endian length, then the
    bytes.

    Raises:
        InvalidArgument: a length runs past the end of the buffer.
    """
    buffer = memoryview(raw.buffer).cast("B")  # type: ignore[arg-type]
    elements: list[bytes] = []
    offset = 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise InvalidArgument.field(
                raw.field,
                counted(len(buffer), "byte"),
                f"ends inside an element's length at {offset}",
            )
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise InvalidArgument.field(
                raw.field,
                counted(len(buffer), "byte"),
                f"element {len(elements)} says {length} bytes, past the end",
            )
        elements.append(bytes(buffer[offset : offset + length]))
        offset += length
    return elements


def serialize_bytes(elements: list[bytes]) -> bytes:
    """BYTES elements in their wire form (see `deserialize_bytes`)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@dataclass(frozen=True)
class ModelMetadata:
    """A model's versions and tensors."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ModelConfiguration:
    """A model version's configuration, in the terms of Triton's model config."""

    name: str
    platform: str
    backend: str
    """The runtime that serves requests naming none."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batching: BatchingConfig
    device: str
    """"cpu", "cuda:0", ..."""
    parameters: dict[str, str]


@dataclass(frozen=True)
class IndexEntry:
    """One model version in the repository index."""

    name: str
    version: int
    ready: bool
    reason: str


@dataclass(frozen=True)
class VersionReport:
    """One version's statistics, with the memory its loaded runtimes hold."""

    name: str
    version: int
    statistics: VersionStatistics
    loaded_bytes: int
