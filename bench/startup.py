"""Cold start and memory of the server, as ratios to a bare `import torch`."""

import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import rss_mb, server_process
from torchwire.client import Client


def _until_serving(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if (
                    stub.Check(
                        health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True
                    ).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                time.sleep(0.005)


def cold_start(store: Path, model: str, runs: int = 3) -> dict:
    """Seconds from process start to SERVING, and to the first Predict of a stored model."""
    serving, first_predict = [], []
    batch = np.zeros((1, 1, 8, 8), np.float32)
    for _ in range(runs):
        with server_process(store) as (_, address, started):
            _until_serving(address)
            serving.append(time.perf_counter() - started)
            with Client(address) as client:
                client.predict(model, batch)
            first_predict.append(time.perf_counter() - started)
    return {
        "serving_s": float(np.median(serving)),
        "first_predict_s": float(np.median(first_predict)),
    }


def idle_memory(store: Path, model: str, rounds: int = 3, calls: int = 2000) -> dict:
    """RSS of a server holding one loaded model, and after repeated rounds of the same load."""
    batch = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    with server_process(store) as (process, address, _), Client(address) as client:
        client.wait_ready()
        client.predict(model, batch)
        idle = rss_mb(process.pid)
        after = []
        for _ in range(rounds):
            for _ in range(calls):
                client.predict(model, batch)
            after.append(rss_mb(process.pid))
    return {"idle_mb": idle, "after_rounds_mb": after}
