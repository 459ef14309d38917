"""Limits, deadlines and client cancellation, through a real channel."""

import threading

import grpc
import numpy as np
import pytest

from tests.conftest import assert_rejected, start_server
from torchwire.client import Client
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

X_TEST, Y_TEST = BUILTIN_DATASETS["digits"].load("test")
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        tmp_path_factory.mktemp("limited"), max_predict_rows=100, max_loaded_bytes=50_000
    )
    with Client(server.address) as client:
        client.train("tiny", "digits", epochs=3, hidden_sizes=[16]).wait()  # 4,570 bytes
        client.train("big", "digits", epochs=1).wait()  # 68,904 bytes: over the bound
        yield server, client
    server.stop(grace=1)


def test_rows_beyond_the_limit_are_resource_exhausted(limited) -> None:
    _, client = limited
    assert client.predict("tiny", X_TEST[:100]).raw.shape == (100, 10)
    request = pb.PredictRequest(model_name="tiny", inputs=tensors.encode(X_TEST[:101]))
    assert_rejected(
        lambda: client.stub.Predict(request), EXHAUSTED, "101 rows", "max_predict_rows=100"
    )


def test_a_model_larger_than_the_memory_bound_is_refused(limited) -> None:
    server, client = limited
    request = pb.PredictRequest(model_name="big", inputs=tensors.encode(X_TEST[:2]))
    assert_rejected(
        lambda: client.stub.Predict(request), EXHAUSTED, "68904 bytes", "max_loaded_bytes=50000"
    )
    assert ("big", 1, "eager") not in server.models.cache.loaded()
    assert client.predict("tiny", X_TEST[:4]).raw.shape == (4, 10)


def test_deadlines_are_honoured(client: Client, digits_model: str) -> None:
    # A run that waits a whole second for company cannot answer within 50 ms.
    client.configure_batching(digits_model, max_batch_size=64, max_delay_ms=1000)
    try:
        request = pb.PredictRequest(model_name=digits_model, inputs=tensors.encode(X_TEST[:2]))
        with pytest.raises(grpc.RpcError) as info:
            client.stub.Predict(request, timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        client.configure_batching(digits_model, reset=True)
    assert client.predict(digits_model, X_TEST[:2]).raw.shape == (2, 10)


def test_cancelled_streams_disturb_nothing(client: Client, digits_model: str) -> None:
    before = client.model(digits_model).versions[-1].version
    # A WatchJob of a long job, cancelled by the client mid-stream.
    job = client.train("watched", "digits", epochs=10_000, patience=0, batch_size=8)
    call = client.stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
    assert next(call).WhichOneof("kind") == "queued"
    call.cancel()
    # A PredictStream abandoned half-way through its input.
    stop = threading.Event()

    def endless():
        while not stop.is_set():
            yield pb.PredictRequest(model_name=digits_model, inputs=tensors.encode(X_TEST[:8]))

    stream = client.stub.PredictStream(endless())
    for _, response in zip(range(20), stream, strict=False):
        assert len(response.top_k) == 8
    stream.cancel()
    stop.set()
    # The job trains on, the model is still loaded and right, the server answers.
    for event in job.events():
        if event.WhichOneof("kind") == "epoch_end":
            break
    assert job.info().state == pb.JOB_STATE_RUNNING
    job.cancel()
    result = client.predict(digits_model, X_TEST, outputs=["top_k"])
    assert (result.top_indices[:, 0] == Y_TEST).mean() > 0.9
    assert client.model(digits_model).versions[-1].version == before
    assert np.isfinite(result.top_probabilities).all()
