"""The tensor codec of the contract: NumPy arrays to and from `torchwire.v1.Tensor`.

Hand-written, beside the generated stubs, so that the server and every Python
client share one definition of the wire format: little-endian, C order.
"""

import math

import numpy as np

from torchwire.v1 import torchwire_pb2 as pb

#: Wire dtype name -> little-endian NumPy dtype.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "float32": "<f4",
        "float64": "<f8",
        "float16": "<f2",
        "int64": "<i8",
        "int32": "<i4",
        "uint8": "u1",
        "bool": "?",
    }.items()
}


def encode(array: np.ndarray) -> pb.Tensor:
    """Packs an array (any byte order or memory layout) as a Tensor."""
    array = np.asarray(array)
    name = array.dtype.name
    if name not in DTYPES:
        raise ValueError(f"dtype {name} is not supported; use one of {sorted(DTYPES)}")
    wire = np.ascontiguousarray(array, dtype=DTYPES[name])
    return pb.Tensor(dtype=name, shape=list(array.shape), data=wire.tobytes())


def decode(tensor: pb.Tensor) -> np.ndarray:
    """Views a Tensor's bytes as a read-only array, without copying.

    Raises:
        ValueError: unknown dtype, a negative dimension, or a byte count that does
            not match the shape; the message says which.
    """
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"dtype {tensor.dtype!r} is not one of {sorted(DTYPES)}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(f"data has {len(tensor.data)} bytes but shape {list(shape)} of "
                         f"{tensor.dtype} needs {expected}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
