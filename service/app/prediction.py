"""A Predict on its way: the loaded runtime it runs on, the checks of its request, and the
pending result that joins its batched pieces."""

import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchwire.service.core.batching import Batcher
from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.records import ModelVersionRecord
from torchwire.service.core.runtimes import Prediction, Runtime, postprocess
from torchwire.service.errors import DeadlineExceeded, InvalidArgument

PREDICT_OUTPUTS = ("raw", "probabilities", "top_k")


@dataclass(frozen=True)
class ServedRuntime:
    """A registered version loaded in one runtime, with its batcher when batching is on."""

    record: ModelVersionRecord
    runtime: Runtime
    batcher: Batcher | None

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class PendingPrediction:
    """A submitted Predict: its pieces run in the batcher; `result` joins them."""

    def __init__(
        self,
        served: ServedRuntime,
        futures: list[Future],
        want_raw: bool,
        want_probabilities: bool,
        top_k: int,
    ) -> None:
        self.served = served
        self.record = served.record
        self._futures = futures
        self._flags = (want_raw, want_probabilities, top_k)

    def result(self, timeout: float | None = None) -> Prediction:
        """Waits for every piece (up to `timeout` seconds in all) and post-processes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            parts = [
                f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
                for f in self._futures
            ]
        except TimeoutError as err:
            raise DeadlineExceeded(f"Predict did not finish within {timeout:.3f} s") from err
        raw = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        runtime = self.served.runtime
        return Prediction(
            runtime=runtime.name,
            placement=runtime.placement,
            batch_sizes=[size for _, size in parts],
            **postprocess(raw, self.record.metadata.task, *self._flags),
        )


def check_request(record: ModelVersionRecord, inputs: np.ndarray, outputs: set[str]) -> set[str]:
    """Checks a batch and the outputs asked for against the version; returns the outputs,
    the task's defaults when none were asked for."""
    meta, which = record.metadata, f"model {record.name!r} v{record.version}"
    expected = meta.input_shape
    if inputs.dtype.name != meta.input_dtype:
        raise InvalidArgument.field(
            "inputs.dtype", inputs.dtype.name, f"{which} takes {meta.input_dtype}"
        )
    if inputs.ndim != len(expected) + 1 or inputs.shape[1:] != expected or not len(inputs):
        raise InvalidArgument.field(
            "inputs.shape",
            list(inputs.shape),
            f"{which} takes [n, {', '.join(map(str, expected))}] with n >= 1",
        )
    classifier = meta.task == CLASSIFICATION
    if not outputs:
        return set(PREDICT_OUTPUTS) if classifier else {"raw"}
    if not classifier and outputs != {"raw"}:
        raise InvalidArgument.field(
            "outputs", sorted(outputs), f"model {record.name!r} is a {meta.task} model; ask for RAW"
        )
    return outputs


def done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
