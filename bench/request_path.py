"""The request path: a batch-1 Predict against a bare gRPC echo of the same bytes, and
closed-loop throughput at 1x1, 1x16 and 64x4 (batch x clients), for this tree's server and
for the server of a baseline commit, side by side in one run.

Each server runs on its own copy of the benchmark's store, and the load comes from
`bench.load` in a process of its own, so that client and server do not share a GIL.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench import echo, serving
from bench.harness import server_process, summary
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
#: The last commit before the request-path work: the "today" the issue's targets refer to.
BASELINE = "4ee2c97"
PREDICT = "/torchwire.v1.TorchWire/Predict"
#: (batch rows, concurrent clients)
LOADS = ((1, 1), (1, 16), (64, 4))
MODEL, INPUT_SHAPE = "mlp", (1, 8, 8)
#: This tree's server, by the flags it runs with.
VARIANTS = {
    "this tree, 1 process": (),
    "this tree, --frontends 1": ("--frontends", "1"),
    "this tree, --frontends 2": ("--frontends", "2"),
    "this tree, --frontends 2, the MLP run by the server": (
        "--frontends",
        "2",
        "--shared-run-ms",
        "0",
    ),
}
#: The memory-bound MLP of the batching benchmark, batched, under SHARED_CLIENTS clients: one
#: process; frontends sending its pieces to the server's one batcher; frontends each loading
#: and batching it themselves.
SHARED_MODEL = serving.WIDE_MLP
SHARED_CLIENTS = 32
SHARED_VARIANTS = {
    "1 process": (),
    "--frontends 2, one batcher in the server": ("--frontends", "2", "--shared-run-ms", "0"),
    "--frontends 2, a batcher in each process": ("--frontends", "2", "--shared-run-ms", "1e9"),
}


def request_bytes(rows: int, model: str = MODEL) -> bytes:
    batch = np.random.default_rng(rows).random((rows, *INPUT_SHAPE), dtype=np.float32)
    request = pb.PredictRequest(
        model_name=model,
        inputs=tensors.encode(batch),
        runtime="onnxruntime",
        outputs=[pb.PREDICT_OUTPUT_RAW],
    )
    return request.SerializeToString()


def load(address: str, method: str, payload: bytes, clients: int, seconds: float) -> dict:
    """`clients` closed-loop clients from `bench.load`; latencies and calls per second."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as request:
        request.write(payload)
        request.flush()
        out = subprocess.run(
            [sys.executable, "-m", "bench.load", address, method, request.name]
            + [str(clients), str(seconds)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    result = json.loads(out)
    return summary(result["latencies"], 1, result["wall_s"])


def baseline_tree(commit: str, into: Path) -> Path | None:
    """The sources of `commit` laid out as the installed package; returns the PYTHONPATH
    entry that runs them, or None when this checkout does not have the commit (a shallow
    clone)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    package = into / "protos" / "torchwire"
    for part in ("service", "client"):
        (package / part).symlink_to(into / part)
    return into / "protos"


@contextmanager
def echo_server(response_bytes: int) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", str(response_bytes)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        yield f"127.0.0.1:{process.stdout.readline().strip()}"  # type: ignore[union-attr]
    finally:
        process.kill()
        process.wait()


@contextmanager
def server_on_copy(
    store: Path, copy: Path, flags: tuple[str, ...], env: dict[str, str] | None = None
) -> Iterator[str]:
    """`torchwire serve` with `flags` on a copy of `store` made at `copy`; yields its
    address."""
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("server.lock"))
    with server_process(copy, *flags, env=env) as (_, address, _):
        yield address


def measure_server(
    address: str, method: str, seconds: float, loads: tuple[tuple[int, int], ...] = LOADS
) -> dict:
    """Each load (batch rows x clients) against one server."""
    return {
        f"{rows}x{clients}": load(address, method, request_bytes(rows), clients, seconds)
        for rows, clients in loads
    }


def run(store: Path, seconds: float, variants: dict[str, tuple[str, ...]]) -> dict:
    """Measures the bare echo, the baseline commit's server and this tree's server under
    each set of `variants` flags, each on a copy of `store` (which holds the MLP, exported).
    """
    results: dict = {"baseline": BASELINE, "servers": {}}
    response = None
    with tempfile.TemporaryDirectory(prefix="torchwire-path-") as tmp:
        base_path = baseline_tree(BASELINE, Path(tmp) / "baseline")
        servers: list[tuple[str, tuple[str, ...], dict | None]] = []
        if base_path is not None:
            env = {**os.environ, "PYTHONPATH": str(base_path)}
            servers.append((f"baseline ({BASELINE})", (), env))
        servers += [(label, flags, None) for label, flags in variants.items()]
        for index, (label, flags, env) in enumerate(servers):
            with server_on_copy(store, Path(tmp) / f"store-{index}", flags, env) as address:
                if response is None:
                    response = _response_bytes(address)
                results["servers"][label] = measure_server(address, PREDICT, seconds)
    with echo_server(response or 0) as address:
        # The floor for batch-1 calls: its answer is the size of a batch-1 Predict's.
        results["echo"] = measure_server(address, echo.METHOD, seconds, LOADS[:2])
    results["shared"] = shared_batching(store, seconds)
    return results


def shared_batching(store: Path, seconds: float) -> dict:
    """SHARED_MODEL under SHARED_CLIENTS batch-1 clients, for each of SHARED_VARIANTS."""
    results = {}
    payload = request_bytes(1, SHARED_MODEL)
    with tempfile.TemporaryDirectory(prefix="torchwire-shared-") as tmp:
        for index, (label, flags) in enumerate(SHARED_VARIANTS.items()):
            with server_on_copy(store, Path(tmp) / f"store-{index}", flags) as address:
                results[label] = load(address, PREDICT, payload, SHARED_CLIENTS, seconds)
    return results


def _response_bytes(address: str) -> int:
    import grpc

    with grpc.insecure_channel(address) as channel:
        return len(channel.unary_unary(PREDICT)(request_bytes(1), timeout=60))
