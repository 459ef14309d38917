"""A Predict on its way: the loaded runtime it runs on, the checks of its request, and the
pending result that joins its batched pieces."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from torchwire.service.core.batching import Batcher, Outcome, Ran
from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.records import ModelVersionRecord
from torchwire.service.core.runtimes import Prediction, Runtime, postprocess
from torchwire.service.errors import DeadlineExceeded, InvalidArgument

PREDICT_OUTPUTS = ("raw", "probabilities", "top_k")


@dataclass(frozen=True)
class ServedRuntime:
    """A registered version loaded in one runtime, with its batcher when batching is on, and
    what every request is checked against, worked out once."""

    record: ModelVersionRecord
    runtime: Runtime
    batcher: Batcher | None
    observe: Callable[[int], None] = lambda rows: None
    """Told the rows of every model run (for metrics)."""
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
        self.observe(len(inputs))
        return [Ran((self.runtime.run(inputs), len(inputs)))]

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.runtime.close()


class PendingPrediction:
    """A submitted Predict: its pieces run in the batcher; `result` joins them."""

    def __init__(
        self,
        served: ServedRuntime,
        futures: list[Outcome],
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
        try:
            if len(self._futures) == 1:
                parts = [self._futures[0].result(timeout)]
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
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


def check_request(served: ServedRuntime, inputs: np.ndarray, outputs: set[str]) -> set[str]:
    """Checks a batch and the outputs asked for against the version; returns the outputs,
    the task's defaults when none were asked for."""
    record = served.record
    meta, which = record.metadata, f"model {record.name!r} v{record.version}"
    expected = served.input_shape
    if inputs.dtype != served.input_dtype:
        raise InvalidArgument.field(
            "inputs.dtype", inputs.dtype.name, f"{which} takes {meta.input_dtype}"
        )
    if inputs.shape[1:] != expected or inputs.ndim != len(expected) + 1 or not len(inputs):
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
