"""Fixed-shape execution: every run padded up to one of a few bucket sizes, each size on an
executor of its own, warmed up once.

ONNX Runtime's CUDA provider and cuDNN plan for one input shape at a time: a run whose batch
size differs from the last one's pays for planning again (25-130 ms on an H100 for resnet18,
against about 1 ms for the run itself), even for a shape it has seen before. Padding runs to
a few sizes, each with an executor that only ever sees its own size, pays that once per size
at load time instead.
"""

import bisect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from torchwire.service.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_BUCKET_SIZE = 65536
MAX_BUCKETS = 16


class Executor(Protocol):
    """Runs batches of exactly one size: the caller writes `inputs`, then calls `run`."""

    inputs: np.ndarray
    """[size, *input_shape]: where the next run's batch goes (pinned host memory on CUDA)."""

    def run(self) -> np.ndarray:
        """Raw float32 outputs of `inputs`, one row per input row; valid until the next run."""
        ...


class Bucketable(Protocol):
    """A runtime that can make executors of fixed batch sizes (every `core.runtimes` one)."""

    name: str
    placement: str

    def executor(self, inputs: np.ndarray) -> Executor:
        """An executor for batches shaped like `inputs` (zeros, which it may keep)."""
        ...

    def size_bytes(self) -> int: ...

    def close(self) -> None: ...


class HostExecutor:
    """An executor over any `run(batch)`: its inputs are a plain array of its size."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> None:
        self._run = run
        self.inputs = inputs

    def run(self) -> np.ndarray:
        return self._run(self.inputs)


def powers_of_two(largest: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to `largest`, with `largest` itself last when it is not a power of two:
    at most twice the rows of any run are computed."""
    sizes = [1 << i for i in range(largest.bit_length()) if 1 << i < largest]
    return (*sizes, largest)


def check_bucket_sizes(sizes: Sequence[int], field: str) -> tuple[int, ...]:
    """`sizes` as a tuple after checking them.

    Raises:
        InvalidArgument: not strictly ascending, out of [1, MAX_BUCKET_SIZE], or more than
            MAX_BUCKETS of them; `field` names them.
    """
    sizes = tuple(sizes)
    if len(sizes) > MAX_BUCKETS:
        raise InvalidArgument.field(field, list(sizes), f"at most {MAX_BUCKETS} sizes")
    if any(not 1 <= s <= MAX_BUCKET_SIZE for s in sizes):
        raise InvalidArgument.field(field, list(sizes), f"each must be in [1, {MAX_BUCKET_SIZE}]")
    if any(a >= b for a, b in zip(sizes, sizes[1:], strict=False)):
        raise InvalidArgument.field(field, list(sizes), "must be strictly ascending")
    return sizes


@dataclass(frozen=True)
class BucketInfo:
    """One executor as the API shows it."""

    batch_size: int
    warmup_seconds: float


class _Bucket:
    def __init__(self, size: int, executor: Executor) -> None:
        self.size = size
        self.executor = executor
        self.lock = threading.Lock()  # one run at a time: the buffers are the executor's own
        self.filled = 0  # rows of `inputs` holding the last run's data, to zero again
        started = time.perf_counter()
        executor.run()  # the warm-up: planning, algorithm search, graph capture
        self.warmup_seconds = time.perf_counter() - started


class BucketedRuntime:
    """A runtime whose runs are padded up to bucket sizes, each run by its own executor.

    Rows of a run are independent in inference (eval mode), so a padded run's real rows
    come out as they would unpadded; the zero rows' outputs are dropped.

    Args:
        runtime: the runtime (`core.runtimes`) whose `executor` makes the executors; its
            name, placement, size and close are this runtime's.
        sizes: the bucket sizes, checked by `check_bucket_sizes`.
        sample: a batch of the model's input shape and dtype (its rows are not used).
        device_free_bytes: reads the device's free memory (CUDA), to report what the
            executors took; None on the CPU.
    """

    def __init__(
        self,
        runtime: Bucketable,
        sizes: Sequence[int],
        sample: np.ndarray,
        device_free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self.placement = runtime.placement
        free_before = device_free_bytes() if device_free_bytes else 0
        started = time.perf_counter()
        self._buckets = [
            _Bucket(size, runtime.executor(np.zeros((size, *sample.shape[1:]), sample.dtype)))
            for size in sizes
        ]
        self._sizes = [bucket.size for bucket in self._buckets]
        self.device_bytes = max(0, free_before - device_free_bytes()) if device_free_bytes else 0
        log.info(
            "%s on %s: %d buckets %s warmed up in %.2f s",
            self.name,
            self.placement,
            len(sizes),
            list(sizes),
            time.perf_counter() - started,
        )

    @property
    def buckets(self) -> list[BucketInfo]:
        return [BucketInfo(b.size, b.warmup_seconds) for b in self._buckets]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw float32 outputs for `batch`, run in pieces of bucket sizes."""
        largest = self._sizes[-1]
        if len(batch) > largest:
            return np.concatenate(
                [
                    self.run(batch[start : start + largest])
                    for start in range(0, len(batch), largest)
                ]
            )
        rows = len(batch)
        bucket = self._buckets[bisect.bisect_left(self._sizes, rows)]
        with bucket.lock:
            inputs = bucket.executor.inputs
            inputs[:rows] = batch
            if bucket.filled > rows:
                inputs[rows : bucket.filled] = 0
            bucket.filled = rows
            return np.array(bucket.executor.run()[:rows], dtype=np.float32, copy=True)

    def size_bytes(self) -> int:
        return self.runtime.size_bytes()

    def close(self) -> None:
        self.runtime.close()
