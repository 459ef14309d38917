"""What fixed-shape buckets cost in memory on the CPU: a resnet18 ONNX file (3x32x32, 10
classes) in ONNX Runtime, its first session and then 7 bucket sessions (1, 2, 4 ... 64),
whose weights are either shared with `add_initializer` (as on CUDA) or each session's own
(as on the CPU). Each way runs in a fresh process; RSS is read from /proc.

    python -m bench.bucket_memory

Not part of `make bench` (it adds a minute); docs/inference.md quotes its figures."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from torchwire.service.core.buckets import powers_of_two
from torchwire.service.core.runtimes import OnnxRuntime, onnx_session

SHAPE = (3, 32, 32)
CPU = torch.device("cpu")


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _export(path: Path) -> None:
    import torchvision

    module = torchvision.models.resnet18(num_classes=10).eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    torch.onnx.export(
        module,
        (torch.zeros(2, *SHAPE),),
        str(path),
        dynamo=True,
        external_data=False,
        dynamic_shapes=({0: batch},),
        input_names=["input"],
        output_names=["output"],
    )


def _measure(path: Path, shared: bool) -> str:
    """In this process: RSS of the first session, then of the buckets; the run times."""
    before = _rss_bytes()
    runtime = OnnxRuntime(path, CPU)
    first = _rss_bytes()
    weights = runtime._shared_weights() if shared else None
    sessions = {
        size: onnx_session(path, CPU, batch_size=("batch", size), initializers=weights)
        for size in powers_of_two(64)
    }
    for size, session in sessions.items():
        session.run(None, {"input": np.zeros((size, *SHAPE), np.float32)})
    buckets = _rss_bytes()
    batch = np.random.default_rng(0).standard_normal((64, *SHAPE)).astype(np.float32)
    started = time.perf_counter()
    for _ in range(10):
        sessions[64].run(None, {"input": batch})
    per_run = (time.perf_counter() - started) / 10
    return (
        f"{'shared' if shared else 'own'} weights: first session +{(first - before) / 2**20:.0f} "
        f"MiB, 7 bucket sessions +{(buckets - first) / 2**20:.0f} MiB, "
        f"batch 64 {per_run * 1000:.1f} ms"
    )


def main() -> None:
    if len(sys.argv) == 3:  # a child: measure one way
        print(_measure(Path(sys.argv[1]), sys.argv[2] == "shared"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.onnx"
        _export(path)
        print(f"resnet18 ONNX file: {path.stat().st_size / 2**20:.1f} MiB")
        for way in ("shared", "own", "shared", "own"):
            command = [sys.executable, "-m", "bench.bucket_memory", str(path), way]
            print(
                subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
            )


if __name__ == "__main__":
    main()
