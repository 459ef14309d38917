"""A Predict on its way: the loaded runtime it runs on, the checks of its request, and the
pending result that joins its batched pieces."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from torchwire.service.app.runner import RemoteBatcher, RemoteRuntime
from torchwire.service.app.statistics import InferenceStatistics
from torchwire.service.core.batching import (
    Batcher,
    Outcome,
    Pending,
    Ran,
    RunObserver,
    RunResult,
    run_now,
    timed_run,
)
from torchwire.service.core.buckets import BucketedRuntime, BucketInfo
from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.precision import as_float32
from torchwire.service.core.records import ModelVersionRecord
from torchwire.service.core.runtimes import Prediction, Runtime, postprocess
from torchwire.service.errors import DeadlineExceeded, InvalidArgument

PREDICT_OUTPUTS = ("raw", "probabilities", "top_k")


@dataclass(frozen=True)
class LoadedRuntime:
    """A loaded runtime as GetModel shows it."""

    runtime: str
    placement: str
    size_bytes: int
    load_seconds: float
    buckets: list[BucketInfo]
    bucket_device_bytes: int


@dataclass(frozen=True)
class ServedRuntime:
    """A registered version loaded in one runtime, with its batcher when batching is on, and
    what every request is checked against, worked out once."""

    record: ModelVersionRecord
    runtime: Runtime | BucketedRuntime | RemoteRuntime
    batcher: Batcher | RemoteBatcher | None
    observe: RunObserver = lambda rows, seconds: None
    """Told the size and time of every model run (for metrics and statistics)."""
    load_seconds: float = 0.0
    """How long loading it took, warm-up included."""
    one_row_seconds: float = 0.0
    """How long a run of one row took after the warm-up."""
    input_dtype: np.dtype = field(init=False)
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        meta = self.record.metadata
        object.__setattr__(self, "input_dtype", np.dtype(meta.input_dtype))
        object.__setattr__(self, "input_shape", tuple(meta.input_shape))

    def submit(self, inputs: np.ndarray) -> list[Outcome]:
        """Runs `inputs` through the batcher, or at once in this thread without one."""
        if self.batcher is not None:
            return self.batcher.submit(inputs)
        ran = timed_run(self.runtime.run, inputs)
        self.observe(ran.rows, ran.seconds)
        return [Ran(ran)]

    def enqueue(self, rows: np.ndarray, on_done: Callable[[Pending[RunResult]], None]) -> None:
        """Queues `rows` as one piece of the next run and calls `on_done` with its outcome
        when the run is over; without a batcher, runs it at once in this thread."""
        if self.batcher is not None:
            self.batcher.enqueue(rows, on_done)
        else:
            run_now(lambda: self.submit(rows)[0].result(), on_done)

    def loaded(self) -> LoadedRuntime:
        runtime = self.runtime
        bucketed = isinstance(runtime, BucketedRuntime)
        return LoadedRuntime(
            runtime.name,
            runtime.placement,
            runtime.size_bytes(),
            self.load_seconds,
            runtime.buckets if bucketed else [],
            runtime.device_bytes if bucketed else 0,
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.runtime.close()


class PendingPrediction:
    """A submitted Predict: its pieces run in the batcher; `result` joins them and records
    the request in the statistics."""

    def __init__(
        self,
        served: ServedRuntime,
        futures: list[Outcome],
        want_raw: bool,
        want_probabilities: bool,
        top_k: int,
        statistics: InferenceStatistics,
        submitted: float,
    ) -> None:
        self.served = served
        self.record = served.record
        self._futures = futures
        self._flags = (want_raw, want_probabilities, top_k)
        self._statistics = statistics
        self._submitted = submitted

    def result(self, timeout: float | None = None) -> Prediction:
        """Waits for every piece (up to `timeout` seconds in all) and post-processes."""
        key = (self.record.name, self.record.version)
        try:
            if len(self._futures) == 1:
                parts = [self._futures[0].result(timeout)]
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
                parts = [
                    f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
                    for f in self._futures
                ]
        except BaseException as err:
            self._statistics.failed(key, time.perf_counter() - self._submitted)
            if isinstance(err, TimeoutError):
                raise DeadlineExceeded(f"Predict did not finish within {timeout:.3f} s") from err
            raise
        raw = parts[0].outputs if len(parts) == 1 else np.concatenate([p.outputs for p in parts])
        runtime = self.served.runtime
        prediction = Prediction(
            runtime=runtime.name,
            placement=runtime.placement,
            batch_sizes=[part.rows for part in parts],
            **postprocess(raw, self.record.metadata.task, *self._flags),
        )
        self._statistics.succeeded(
            key,
            len(raw),
            time.perf_counter() - self._submitted,
            queue=max(0.0, min(p.started for p in parts) - self._submitted),
            compute=sum(p.seconds for p in parts),
        )
        return prediction


@dataclass(frozen=True)
class InputFields:
    """How a protocol names a request's input fields in its errors."""

    dtype: str = "inputs.dtype"
    shape: str = "inputs.shape"
    values: str = "inputs.data"
    type_name: Callable[[str], str] = str
    """A NumPy dtype's name as the protocol spells it."""
    float64_to_float32: bool = True
    """Whether float64 inputs of a float32 model are converted (`core.precision`'s rule)
    instead of refused."""


V1_FIELDS = InputFields()
"""torchwire.v1's names."""


def check_request(
    served: ServedRuntime,
    inputs: np.ndarray,
    outputs: set[str],
    fields: InputFields = V1_FIELDS,
) -> tuple[np.ndarray, set[str]]:
    """Checks a batch and the outputs asked for against the version; returns the batch to
    run (float64 converted for a float32 model, where the protocol allows it) and the
    outputs, the task's defaults when none were asked for."""
    record = served.record
    meta, which = record.metadata, f"model {record.name!r} v{record.version}"
    expected = served.input_shape
    if fields.float64_to_float32 and served.input_dtype == np.float32:
        inputs = as_float32(inputs, fields.values)
    if inputs.dtype != served.input_dtype:
        raise InvalidArgument.field(
            fields.dtype,
            fields.type_name(inputs.dtype.name),
            f"{which} takes {fields.type_name(meta.input_dtype)}",
        )
    if inputs.shape[1:] != expected or inputs.ndim != len(expected) + 1 or not len(inputs):
        raise InvalidArgument.field(
            fields.shape,
            list(inputs.shape),
            f"{which} takes [n, {', '.join(map(str, expected))}] with n >= 1",
        )
    classifier = meta.task == CLASSIFICATION
    if not outputs:
        return inputs, set(PREDICT_OUTPUTS) if classifier else {"raw"}
    if not classifier and outputs != {"raw"}:
        raise InvalidArgument.field(
            "outputs", sorted(outputs), f"model {record.name!r} is a {meta.task} model; ask for RAW"
        )
    return inputs, outputs
