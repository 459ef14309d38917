"""What every benchmark needs: a real server process, timing loops, latency statistics, RSS."""

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from torchwire.client.demo import start_server


@contextmanager
def server_process(
    store: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen, str, float]]:
    """`torchwire serve` on a free port; yields the process, its address and its start time."""
    started = time.perf_counter()
    process, address = start_server(str(store), *flags, env=env)
    try:
        yield process, address, started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def run_for(call: Callable[[], object], seconds: float, min_calls: int = 20) -> list[float]:
    """Calls `call` repeatedly for about `seconds` (and at least `min_calls` times); returns
    each call's latency in seconds. A few warm-up calls are not counted."""
    for _ in range(3):
        call()
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < min_calls:
        begin = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - begin)
    return latencies


def summary(latencies: list[float], samples_per_call: int, wall: float | None = None) -> dict:
    """Throughput (samples/s) and p50/p99 latency (ms) of a run."""
    wall = wall if wall is not None else sum(latencies)
    return {
        "samples_per_s": samples_per_call * len(latencies) / wall,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "calls": len(latencies),
    }


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


class PeakMemory:
    """Samples the peak RSS of a server and of its worker processes while a benchmark runs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.server_mb = 0.0
        self.worker_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.server_mb = max(self.server_mb, rss_mb(self.pid))
                for child in children(self.pid):
                    self.worker_mb = max(self.worker_mb, rss_mb(child))
            except (FileNotFoundError, ProcessLookupError):
                pass
            self._stop.wait(self.interval)


def bare_torch() -> tuple[float, float]:
    """Wall seconds and RSS (MiB) of `python -c "import torch"`, median of three runs."""
    code = (
        "import torch\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])"
    )
    times, rss = [], []
    for _ in range(3):
        begin = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        times.append(time.perf_counter() - begin)
        rss.append(int(out) / 1024)
    return statistics.median(times), statistics.median(rss)


def machine() -> str:
    """The machine in one line."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    import onnxruntime
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores ({model}), {cuda}; Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )
