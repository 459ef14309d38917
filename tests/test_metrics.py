"""Prometheus metrics: real traffic through both protocols, then a real HTTP scrape."""

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_server
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.v1 import torchwire_pb2 as pb

X_TEST, _ = BUILTIN_DATASETS["digits"].load("test")


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_cover_requests_models_and_jobs(tmp_path: Path) -> None:
    server = start_server(tmp_path, metrics_address="127.0.0.1:0")
    try:
        before = _scrape(server.metrics_port)
        with Client(server.address) as client:
            client.train("metered", "digits", epochs=3).wait()
            for _ in range(5):
                client.predict("metered", X_TEST[:4])
            with pytest.raises(grpc.RpcError):
                client.predict("metered", np.zeros((2, 3), np.float32))
            v2_grpc.GRPCInferenceServiceStub(client.channel).ServerLive(v2.ServerLiveRequest())
        after = _scrape(server.metrics_port)
    finally:
        server.stop(grace=1)
    v1 = "torchwire.v1.TorchWire"
    requests = "torchwire_grpc_requests_total"
    assert _value(before, requests, service=v1, method="Predict", code="OK") == 0
    assert _value(after, requests, service=v1, method="Predict", code="OK") == 5
    assert _value(after, requests, service=v1, method="Predict", code="INVALID_ARGUMENT") == 1
    assert _value(after, requests, service=v1, method="Train", code="OK") == 1
    assert (
        _value(
            after,
            requests,
            service="inference.GRPCInferenceService",
            method="ServerLive",
            code="OK",
        )
        == 1
    )
    assert _value(after, "torchwire_grpc_request_seconds_count", service=v1, method="Predict") == 6
    assert (
        _value(after, "torchwire_model_run_batch_size_count", model="metered", runtime="eager") >= 5
    )
    assert (
        _value(after, "torchwire_model_run_batch_size_sum", model="metered", runtime="eager") >= 20
    )
    assert _value(after, "torchwire_models_loaded") == 1
    assert _value(after, "torchwire_jobs", state="succeeded") == 1
    assert _value(after, "torchwire_jobs", state="running") == 0
    assert _value(after, "torchwire_training_epoch_seconds_count", model="metered") == 3
    assert _value(after, "torchwire_training_samples_per_second", model="metered") > 0


def test_json_logs_carry_request_and_job_ids(tmp_path: Path) -> None:
    stderr = tmp_path / "server.log"
    with open(stderr, "w") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torchwire.service",
                "--address",
                "127.0.0.1:0",
                "--store",
                str(tmp_path / "store"),
                "--log-format",
                "json",
                "--log-level",
                "DEBUG",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            address = process.stdout.readline().split()[-1]
            with Client(address) as client:
                job = client.train("logged", "digits", epochs=1)
                job.wait()
                with pytest.raises(grpc.RpcError):
                    client.stub.GetModel(
                        pb.GetModelRequest(name="nope"), metadata=[("x-request-id", "req-42")]
                    )
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    assert lines
    assert all(
        {"time", "level", "logger", "message", "request_id", "job_id"} <= set(line)
        for line in lines
    )
    access = [line for line in lines if line["request_id"] == "req-42"]
    assert access
    assert "GetModel NOT_FOUND" in access[-1]["message"]
    job_lines = [line for line in lines if line["job_id"] == job.id]
    assert any(line["message"].startswith("job finished") for line in job_lines)


def test_tensorboard_event_files_are_readable(client: Client, server) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = client.train("boarded", "digits", epochs=2, tensorboard=True, batch_size=16)
    assert job.wait().request.config.tensorboard
    events = EventAccumulator(str(server.store.layout.job_dir(job.id) / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "val/loss", "train/accuracy", "val/accuracy", "learning_rate"} <= set(
        scalars
    )
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2]
    history = job.history()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [h["train_loss"] for h in history], rel=1e-6
    )
    assert events.Tags()["graph"]
    # One train/batch_loss per step, numbered on across epochs; each epoch's mean is its loss.
    steps = events.Scalars("train/batch_loss")
    per_epoch = len(steps) // 2
    assert per_epoch == 81  # ceil(1293 / 16)
    assert [e.step for e in steps] == list(range(1, 2 * per_epoch + 1))
    for epoch, row in enumerate(history):
        losses = [e.value for e in steps[epoch * per_epoch : (epoch + 1) * per_epoch]]
        assert np.mean(losses) == pytest.approx(row["train_loss"], rel=0.02)
