"""Predict through the service against the same runtime in-process; dynamic batching on and
off under 32 concurrent clients; the three runtimes side by side."""

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from bench import echo
from bench.harness import run_for, summary
from torchwire.client import Client
from torchwire.service.core.checkpoint import load_model
from torchwire.service.core.device import choose_device
from torchwire.service.core.runtimes import OnnxRuntime, TorchRuntime, load_torchscript
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb
from torchwire.v1 import torchwire_pb2_grpc as pb_grpc

MODELS = {"mlp": {"architecture": "mlp"}, "cnn": {"architecture": "cnn"}}
INPUT_SHAPE = (1, 8, 8)
#: A heavier image model (3x32x32 inputs, 64/128/256-channel blocks), where one sample's run
#: costs more than the gRPC round trip: the regime batching is for.
WIDE = "wide-cnn"
WIDE_SHAPE = (3, 32, 32)
#: An MLP whose 65 MiB of weights do not fit in the CPU's caches (8x8 digits, 4096/4096
#: hidden units): a batch-1 run streams every weight from memory, and a run of 32 rows streams
#: them once for all 32. The regime of embedding, ranking and language models, and the one
#: where merging requests pays on a CPU.
WIDE_MLP = "wide-mlp"
WIDE_MLP_SPEC = {"architecture": "mlp", "hidden_sizes": [4096, 4096]}


def prepare(client: Client) -> None:
    """Trains the MLP and the CNN on the digits, the wide MLP on the digits (2 epochs) and the
    wide CNN on random images; exports all of them to both formats."""
    for name, spec in MODELS.items():
        client.train(name, "digits", epochs=3, seed=0, **spec).wait()
    client.train(WIDE_MLP, "digits", epochs=2, seed=0, val_fraction=0, **WIDE_MLP_SPEC).wait()
    rng = np.random.default_rng(0)
    client.upload_dataset(
        "images", rng.random((256, *WIDE_SHAPE), dtype=np.float32), rng.integers(0, 10, 256)
    )
    client.train(
        WIDE, "images", architecture="cnn", channels=[64, 128, 256], epochs=1, val_fraction=0
    ).wait()
    for name in (*MODELS, WIDE_MLP, WIDE):
        for fmt in ("onnx", "torchscript"):
            client.export(name, fmt)


def in_process(store: Path, name: str, runtime: str):
    """The runtime the server uses, opened here from the server's own files."""
    directory, device = store / "models" / name / "1", choose_device("auto")  # the server's
    if runtime == "onnxruntime":
        return OnnxRuntime(directory / "model.onnx", device)
    if runtime == "torchscript":
        return load_torchscript(directory / "model.torchscript.pt", device)
    module, _ = load_model(directory / "model.pt", device)
    return TorchRuntime("eager", module, device)


def batch_of(size: int, shape: tuple[int, ...] = INPUT_SHAPE) -> np.ndarray:
    return np.random.default_rng(size).random((size, *shape), dtype=np.float32)


def bare_grpc(request: pb.PredictRequest, response_bytes: int, seconds: float, size: int) -> dict:
    """The floor: a round trip of the same messages through a bare gRPC Python server."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", str(response_bytes)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = process.stdout.readline().strip()  # type: ignore[union-attr]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(echo.METHOD)
            payload = request.SerializeToString()
            return summary(run_for(lambda: call(payload), seconds), size)
    finally:
        process.kill()
        process.wait()


def overhead(client: Client, store: Path, seconds: float) -> list[dict]:
    """Service vs in-process, ONNX Runtime, per model and batch size; and bare gRPC."""
    rows = []
    for name in MODELS:
        local = in_process(store, name, "onnxruntime")
        for size in (1, 64, 256):
            batch = batch_of(size)
            direct = summary(run_for(lambda b=batch, rt=local: rt.run(b), seconds), size)
            served = summary(
                run_for(
                    lambda b=batch, n=name: client.predict(
                        n, b, runtime="onnxruntime", outputs=["raw"]
                    ),
                    seconds,
                ),
                size,
            )
            request = pb.PredictRequest(
                model_name=name,
                inputs=tensors.encode(batch),
                runtime="onnxruntime",
                outputs=[pb.PREDICT_OUTPUT_RAW],
            )
            response = client.stub.Predict(request).ByteSize()
            floor = bare_grpc(request, response, seconds, size)
            rows.append(
                {
                    "model": name,
                    "batch": size,
                    "in_process": direct,
                    "service": served,
                    "bare_grpc": floor,
                    "ratio": served["samples_per_s"] / direct["samples_per_s"],
                    "p50_overhead_ms": served["p50_ms"] - direct["p50_ms"],
                    "own_p50_ms": served["p50_ms"] - direct["p50_ms"] - floor["p50_ms"],
                }
            )
    return rows


async def clients(
    address: str,
    model: str,
    runtime: str,
    concurrency: int,
    seconds: float,
    shape: tuple[int, ...] | None = None,
) -> dict:
    """`concurrency` clients each sending batch-1 requests back to back for `seconds`."""
    shape = shape or (WIDE_SHAPE if model == WIDE else INPUT_SHAPE)
    request = pb.PredictRequest(
        model_name=model,
        runtime=runtime,
        inputs=tensors.encode(batch_of(1, shape)),
        outputs=[pb.PREDICT_OUTPUT_RAW],
    )
    latencies: list[float] = []
    run_sizes: list[int] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TorchWireStub(channel)
        for _ in range(3):
            await stub.Predict(request)

        async def one_client(deadline: float) -> None:
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                response = await stub.Predict(request)
                latencies.append(time.perf_counter() - begin)
                run_sizes.append(response.batch_sizes[0])

        begin = time.perf_counter()
        deadline = begin + seconds
        await asyncio.gather(*(one_client(deadline) for _ in range(concurrency)))
        wall = time.perf_counter() - begin
    result = summary(latencies, 1, wall)
    result["mean_run_size"] = float(np.mean(run_sizes))
    return result


def batching(client: Client, seconds: float, concurrency: int = 32) -> list[dict]:
    """Throughput and latency of concurrent batch-1 clients with batching on and off."""
    rows = []
    settings = {
        "off": {"enabled": False},
        "on, max_delay 0 ms": {"max_delay_ms": 0.0},
        "on, max_delay 2 ms": {"max_delay_ms": 2.0},
    }
    for name in (*MODELS, WIDE_MLP, WIDE):
        for runtime in ("onnxruntime", "eager"):
            results = {}
            for label, setting in settings.items():
                client.configure_batching(name, max_batch_size=64, **setting)
                results[label] = asyncio.run(
                    clients(client.address, name, runtime, concurrency, seconds)
                )
            client.configure_batching(name, reset=True)
            off = results["off"]
            for label, result in results.items():
                rows.append(
                    {
                        "model": name,
                        "runtime": runtime,
                        "batching": label,
                        **result,
                        "throughput_vs_off": result["samples_per_s"] / off["samples_per_s"],
                        "p99_vs_off": result["p99_ms"] / off["p99_ms"],
                    }
                )
    return rows


def runtimes(client: Client, seconds: float, size: int = 64) -> list[dict]:
    """The CNN at batch 64 through Predict on each runtime."""
    batch = batch_of(size)
    rows = []
    for runtime in ("eager", "torchscript", "onnxruntime"):
        rows.append(
            {
                "runtime": runtime,
                **summary(
                    run_for(
                        lambda r=runtime: client.predict("cnn", batch, runtime=r, outputs=["raw"]),
                        seconds,
                    ),
                    size,
                ),
            }
        )
    eager = rows[0]["samples_per_s"]
    for row in rows:
        row["vs_eager"] = row["samples_per_s"] / eager
    return rows
