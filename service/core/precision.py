"""Floating-point precision: the one rule for float64 values sent to float32 models and
datasets.

NumPy's default float is float64, so a client's array often is one, while torchwire trains
and serves float32. UploadDataset and torchwire.v1 Predict convert float64 to float32: each
value is rounded to the nearest float32 (about 7 significant digits), and a finite value
beyond float32's range would become infinite, so it is refused. The Open Inference Protocol
keeps its own rule: a tensor's datatype must be the model's.
"""

import numpy as np

from torchwire.service.errors import InvalidArgument

FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float32(array: np.ndarray, field: str) -> np.ndarray:
    """`array` as float32 when it is float64 (any other dtype is returned as it is).

    Raises:
        InvalidArgument: a finite value is beyond float32's range; `field` names the array.
    """
    if array.dtype != np.float64:
        return array
    with np.errstate(over="ignore"):
        converted = array.astype(np.float32)
    overflowed = np.isinf(converted) & np.isfinite(array)
    if overflowed.any():
        raise InvalidArgument.field(
            field,
            float(array[overflowed].flat[0]),
            f"is beyond float32's range (±{FLOAT32_MAX:.4g}); float64 values are converted "
            "to float32",
        )
    return converted
