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


#: Wire dtype name by NumPy dtype, for arrays already in their wire form.
_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def fill(tensor: pb.Tensor, array: np.ndarray) -> pb.Tensor:
    """Writes an array (any byte order or memory layout) into `tensor`, in place; returns it.

    An array already little-endian and C-ordered (what NumPy makes on every common machine)
    is copied once, into the message.
    """
    array = np.asarray(array)
    name = _NAMES.get(array.dtype)
    if name is None:  # another byte order, or a dtype the wire does not carry
        name = array.dtype.name
        if name not in DTYPES:
            raise ValueError(f"dtype {name} is not supported; use one of {sorted(DTYPES)}")
        array = array.astype(DTYPES[name])
    tensor.dtype = name
    tensor.shape[:] = array.shape
    tensor.data = array.tobytes()  # C order, whatever the layout
    return tensor


def encode(array: np.ndarray) -> pb.Tensor:
    """Packs an array (any byte order or memory layout) as a new Tensor."""
    return fill(pb.Tensor(), array)


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
    if shape and min(shape) < 0:
        raise ValueError(f"shape {list(shape)} has a negative dimension")
    data = tensor.data
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"data has {len(data)} bytes but shape {list(shape)} of "
            f"{tensor.dtype} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)
