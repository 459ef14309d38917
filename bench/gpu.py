"""The GPU section of `make bench` (runs only where CUDA is): a resnet18 on 3x32x32 through
Predict against the same runtime in-process at batch 1 and 64, batching on vs off with 32
batch-1 clients, and batch sizes varying over 1..64 against a fixed 64, each with
fixed-shape buckets (the CUDA default) and with `--bucket-sizes off` on the same store.

`python -m bench.gpu --allow-cpu --seconds 0.5` runs the same code on the CPU, as a smoke
test of the benchmark itself: its figures say nothing about a GPU."""

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import torch

from bench.harness import run_for, server_process, summary
from bench.serving import clients, in_process
from torchwire.client import Client

NAME = "gpu-resnet18"
SHAPE = (3, 32, 32)
CONCURRENCY = 32
MAX_BATCH = 64


def _prepare(client: Client) -> None:
    """resnet18 (random images, one epoch: the weights do not matter for speed), exported."""
    rng = np.random.default_rng(0)
    images = rng.random((512, *SHAPE), dtype=np.float32)
    client.upload_dataset("gpu-images", images, rng.integers(0, 10, 512))
    client.train(
        NAME,
        "gpu-images",
        model={"torchvision": {"name": "resnet18"}},
        epochs=1,
        val_fraction=0,
        seed=0,
    ).wait()
    for fmt in ("onnx", "torchscript"):
        client.export(NAME, fmt)


def _service_vs_in_process(client: Client, store: Path, seconds: float) -> list[dict]:
    rows = []
    for runtime in ("onnxruntime", "eager"):
        local = in_process(store, NAME, runtime)
        for size in (1, MAX_BATCH):
            batch = np.random.default_rng(size).random((size, *SHAPE), dtype=np.float32)
            mine = summary(run_for(lambda b=batch, m=local: m.run(b), seconds), size)
            theirs = summary(
                run_for(
                    lambda b=batch, r=runtime: client.predict(NAME, b, runtime=r, outputs=["raw"]),
                    seconds,
                ),
                size,
            )
            rows.append(
                {
                    "runtime": runtime,
                    "batch": size,
                    "in_process": mine,
                    "service": theirs,
                    "ratio": theirs["samples_per_s"] / mine["samples_per_s"],
                }
            )
    return rows


def _batching(client: Client, seconds: float) -> list[dict]:
    rows = []
    for runtime in ("onnxruntime", "eager"):
        results = {}
        for label, enabled in (("off", False), ("on", True)):
            client.configure_batching(NAME, enabled=enabled, max_batch_size=MAX_BATCH)
            results[label] = asyncio.run(
                clients(client.address, NAME, runtime, CONCURRENCY, seconds, SHAPE)
            )
        client.configure_batching(NAME, reset=True)
        rows.append(
            {
                "runtime": runtime,
                **{label: result for label, result in results.items()},
                "throughput_on_vs_off": results["on"]["samples_per_s"]
                / results["off"]["samples_per_s"],
                "p99_on_vs_off": results["on"]["p99_ms"] / results["off"]["p99_ms"],
            }
        )
    return rows


def _varying(client: Client, seconds: float) -> list[dict]:
    """One client: batch sizes drawn uniformly from 1..64, against a fixed 64, per sample."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, MAX_BATCH + 1, 4096)
    batches = {n: rng.random((n, *SHAPE), dtype=np.float32) for n in range(1, MAX_BATCH + 1)}
    rows = []
    for runtime in ("onnxruntime", "eager"):
        fixed = summary(
            run_for(
                lambda r=runtime: client.predict(
                    NAME, batches[MAX_BATCH], runtime=r, outputs=["raw"]
                ),
                seconds,
            ),
            MAX_BATCH,
        )
        drawn = iter(sizes.tolist() * 100)
        sent: list[int] = []

        def call(r: str = runtime, drawn=drawn, sent=sent) -> None:  # noqa: ANN001
            size = next(drawn)
            sent.append(size)
            client.predict(NAME, batches[size], runtime=r, outputs=["raw"])

        latencies = run_for(call, seconds)
        varying = {
            "samples_per_s": sum(sent[3:]) / sum(latencies),  # run_for's 3 warm-up calls
            "calls": len(latencies),
        }
        rows.append(
            {
                "runtime": runtime,
                "fixed_64_samples_per_s": fixed["samples_per_s"],
                "varying_samples_per_s": varying["samples_per_s"],
                "ratio": varying["samples_per_s"] / fixed["samples_per_s"],
            }
        )
    return rows


def _buckets(client: Client) -> list[dict]:
    """Each loaded runtime's buckets, warm-up and device memory, as GetModel shows them."""
    return [
        {
            "runtime": loaded.runtime,
            "placement": loaded.placement,
            "buckets": [b.batch_size for b in loaded.buckets],
            "warmup_s": sum(b.warmup_seconds for b in loaded.buckets),
            "load_s": loaded.load_seconds,
            "device_mb": loaded.bucket_device_bytes / 2**20,
        }
        for loaded in client.model(NAME).versions[-1].loaded
    ]


def run(store: Path, seconds: float) -> dict:
    """Everything above, on a store of its own: first with the server's default buckets,
    then with `--bucket-sizes off`."""
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else ""}
    with server_process(store) as (_, address, _), Client(address, timeout=600) as client:
        client.wait_ready()
        _prepare(client)
        results["overhead"] = _service_vs_in_process(client, store, seconds)
        results["batching"] = _batching(client, 2 * seconds)
        results["varying"] = _varying(client, 2 * seconds)
        results["buckets"] = _buckets(client)
    with (
        server_process(store, "--bucket-sizes", "off") as (_, address, _),
        Client(address, timeout=600) as client,
    ):
        client.wait_ready()
        results["batching_unbucketed"] = _batching(client, 2 * seconds)
        results["varying_unbucketed"] = _varying(client, 2 * seconds)
    return results


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-test on the CPU")
    args = parser.parse_args()
    if not (torch.cuda.is_available() or args.allow_cpu):
        raise SystemExit("no CUDA device: nothing to measure (--allow-cpu runs it anyway)")
    with tempfile.TemporaryDirectory(prefix="torchwire-gpu-bench-") as tmp:
        print(json.dumps(run(Path(tmp) / "store", args.seconds), indent=2))


if __name__ == "__main__":
    main()
