"""Inference statistics per model version, as the Open Inference Protocol reports them:
requests that succeeded and failed, the time they queued, ran and spent on their inputs and
outputs, and the size and time of every model run."""

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, fields

from torchwire.service.core.batching import RunObserver


@dataclass
class Duration:
    """A count and the nanoseconds it took in all."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def merge(self, other: "Duration") -> None:
        self.count += other.count
        self.ns += other.ns


@dataclass
class VersionStatistics:
    """What one model version served since the server started.

    Attributes:
        success: requests answered, and their time from submission to outputs.
        fail: requests refused or failed after their version was known, and their time.
        queue: time requests waited for their model run.
        compute_input: time preparing inputs (decoding images, reading shared memory).
        compute_infer: time of the runs that served requests (per request).
        compute_output: time producing outputs (post-processing, writing shared memory).
        inference_count: samples answered.
        execution_count: model runs.
        last_inference_ms: when a request last succeeded (ms since the epoch), 0 if never.
        runs: run size -> runs of that size and their time.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    runs: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))

    def merge(self, other: "VersionStatistics") -> None:
        """Adds another process' statistics of the same version."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, Duration):
                mine.merge(theirs)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for size, duration in other.runs.items():
            self.runs[size].merge(duration)


Key = tuple[str, int]
"""(model name, version number)."""


class InferenceStatistics:
    """Statistics of every model version this process served, safe to update from any
    thread (one lock; each update is a few additions)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[Key, VersionStatistics] = defaultdict(VersionStatistics)

    def run_observer(self, name: str, version: int) -> RunObserver:
        """What to tell the size and time of each run of a version."""
        stats = self._versions[(name, version)]

        def observe(rows: int, seconds: float) -> None:
            with self._lock:
                stats.execution_count += 1
                stats.runs[rows].add(seconds)

        return observe

    def succeeded(self, key: Key, rows: int, seconds: float, queue: float, compute: float) -> None:
        """A request of `rows` samples answered in `seconds`, of which it queued `queue` and
        its runs took `compute`."""
        with self._lock:
            stats = self._versions[key]
            stats.success.add(seconds)
            stats.queue.add(queue)
            stats.compute_infer.add(compute)
            stats.inference_count += rows
            stats.last_inference_ms = int(time.time() * 1000)

    def failed(self, key: Key, seconds: float) -> None:
        """A request of this version failed after `seconds`."""
        with self._lock:
            self._versions[key].fail.add(seconds)

    def prepared(self, key: Key, input_seconds: float, output_seconds: float) -> None:
        """A request's inputs took `input_seconds` to prepare and its outputs
        `output_seconds` to produce."""
        with self._lock:
            stats = self._versions[key]
            stats.compute_input.add(input_seconds)
            stats.compute_output.add(output_seconds)

    def snapshot(self) -> dict[Key, VersionStatistics]:
        """A copy of every version's statistics."""
        with self._lock:
            copies = {}
            for key, stats in self._versions.items():
                copy = VersionStatistics()
                copy.merge(stats)
                copies[key] = copy
            return copies

    def forget(self, name: str, version: int) -> None:
        """Drops a deleted version's statistics (0: every version of the model)."""
        with self._lock:
            for key in [k for k in self._versions if k[0] == name and version in (0, k[1])]:
                del self._versions[key]


def merged(snapshots: list[dict[Key, VersionStatistics]]) -> dict[Key, VersionStatistics]:
    """Several processes' snapshots summed per version."""
    total: dict[Key, VersionStatistics] = defaultdict(VersionStatistics)
    for snapshot in snapshots:
        for key, stats in snapshot.items():
            total[key].merge(stats)
    return dict(total)
