"""Prometheus metrics: real traffic through both protocols, then a real HTTP scrape."""

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
from torchwire.service.core.data import BUILTIN_DATASETS

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
