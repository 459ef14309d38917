"""The main path through a real channel: upload, train, watch, evaluate, predict, models, cancel."""

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.conftest import start_server
from torchwire.client import Client, JobError
from torchwire.service.core.architectures import MLPParams
from torchwire.service.core.checkpoint import load_model
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.core.spec import TrainConfig, TrainSpec
from torchwire.v1 import torchwire_pb2 as pb


def test_health_and_reflection(client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "torchwire.v1.TorchWire"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(client.channel)
    assert "torchwire.v1.TorchWire" in database.get_services()
    assert "grpc.health.v1.Health" in database.get_services()
    service = database.FindFileContainingSymbol("torchwire.v1.TorchWire").service
    methods = {m.name for s in service for m in s.method}
    assert {"Train", "WatchJob", "Evaluate", "Predict", "UploadDataset", "CancelJob"} <= methods


def test_builtin_digits_are_listed(client: Client) -> None:
    digits = next(d for d in client.datasets() if d.name == "digits")
    assert digits.builtin
    assert list(digits.feature_shape) == [1, 8, 8]
    assert {s.split: s.num_samples for s in digits.splits} == {"train": 1437, "test": 360}
    assert len(digits.classes) == 10


def test_upload_train_watch_evaluate_predict(client: Client, server) -> None:
    x, y = BUILTIN_DATASETS["digits"].load("train")
    x_test, y_test = BUILTIN_DATASETS["digits"].load("test")
    names = [f"digit-{d}" for d in range(10)]
    dataset = client.upload_dataset("uploaded-digits", x, y, classes=names, chunk_bytes=20_000)
    client.upload_dataset("uploaded-digits", x_test, y_test, split="test", classes=names)
    assert dataset.task == "classification"
    assert dataset.splits[0].num_samples == len(x)

    job = client.train(
        "cnn-digits",
        "uploaded-digits",
        architecture="cnn",
        channels=[16, 32],
        epochs=8,
        patience=3,
        seed=1,
    )
    events = list(job.events())
    kinds = [e.WhichOneof("kind") for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds[0] == "queued"
    assert kinds[1] == "started"
    assert kinds[-1] == "finished"
    epoch_ends = [e.epoch_end for e in events if e.WhichOneof("kind") == "epoch_end"]
    assert [e.metrics.epoch for e in epoch_ends] == list(range(1, len(epoch_ends) + 1))
    assert all(
        e.metrics.HasField("val_loss") and e.metrics.samples_per_second > 0 for e in epoch_ends
    )
    assert epoch_ends[-1].eta_seconds == 0
    roles = {e.checkpoint_saved.role for e in events if e.WhichOneof("kind") == "checkpoint_saved"}
    assert roles == {"best", "last"}

    final = job.info()
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert final.device == "cpu" or final.device.startswith("cuda")
    assert len(final.history) == len(epoch_ends)
    finished = events[-1].finished
    assert finished.model_version == final.model_version >= 1
    assert finished.best_epoch == final.best_epoch
    assert job.history()[0]["val_accuracy"] > 0

    result = client.evaluate("cnn-digits", "uploaded-digits")
    assert result.num_samples == len(x_test)
    assert result.metrics["accuracy"] > 0.9
    confusion = np.frombuffer(result.confusion_matrix.data, "<i8").reshape(10, 10)
    assert confusion.sum() == len(x_test)
    assert np.trace(confusion) / len(x_test) == pytest.approx(result.metrics["accuracy"])
    assert [c.name for c in result.per_class] == names
    assert sum(c.support for c in result.per_class) == len(x_test)

    prediction = client.predict("cnn-digits", torch.from_numpy(x_test[:16]), top_k=3)
    assert prediction.runtime == "eager"
    assert prediction.raw.shape == (16, 10)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1, rtol=1e-5)
    assert prediction.top_indices.shape == (16, 3)
    assert prediction.top_labels[0][0] == names[prediction.top_indices[0][0]]
    np.testing.assert_array_equal(prediction.top_indices[:, 0], prediction.raw.argmax(axis=1))

    # The served outputs are those of the stored state_dict run in plain PyTorch.
    record = server.store.versions.get("cnn-digits", final.model_version)
    module, _ = load_model(server.store.versions.verified_checkpoint(record), torch.device("cpu"))
    with torch.no_grad():
        expected = module(torch.from_numpy(x_test[:16])).numpy()
    np.testing.assert_allclose(prediction.raw, expected, rtol=1e-4, atol=1e-5)


def test_models_listing_and_delete(client: Client, server, digits_model: str) -> None:
    job = client.train("to-delete", "digits", epochs=1, val_fraction=0)
    job.wait()
    model = client.model("to-delete")
    assert [v.version for v in model.versions] == [1]
    version = model.versions[0]
    assert version.task == "classification"
    assert list(version.input_shape) == [1, 8, 8]
    assert version.input_dtype == "float32"
    assert version.output_size == 10
    assert version.training.config.epochs == 1
    assert version.training.dataset.name == "digits"
    assert len(version.history) == 1
    assert "loss" in version.metrics
    assert {m.name for m in client.models()} >= {"to-delete", digits_model}

    x, _ = BUILTIN_DATASETS["digits"].load("test")
    client.predict("to-delete", x[:2])  # loads it into the cache
    assert ("to-delete", 1, "eager") in server.models.cache.loaded()
    assert client.delete_model("to-delete") == [1]
    assert ("to-delete", 1, "eager") not in server.models.cache.loaded()
    assert "to-delete" not in {m.name for m in client.models()}
    with pytest.raises(grpc.RpcError, match="does not exist"):
        client.predict("to-delete", x[:2])
    # Version numbers are never reused: a new training registers version 2.
    client.train("to-delete", "digits", epochs=1, val_fraction=0).wait()
    assert [v.version for v in client.model("to-delete").versions] == [2]


def test_predict_defaults_and_version_pinning(client: Client, digits_model: str) -> None:
    x, y = BUILTIN_DATASETS["digits"].load("test")
    latest = client.model(digits_model).latest_version
    pinned = client.predict(digits_model, x, version=latest, outputs=["top_k"])
    assert pinned.version == latest
    assert pinned.raw is None
    assert pinned.probabilities is None
    assert (pinned.top_indices[:, 0] == y).mean() > 0.9


def test_regression_end_to_end(client: Client, regression_data: str) -> None:
    job = client.train(
        "linear-mlp",
        regression_data,
        loss="mse",
        epochs=25,
        hidden_sizes=[32],
        learning_rate=0.01,
        seed=0,
    )
    job.wait()
    result = client.evaluate("linear-mlp", regression_data)
    assert set(result.metrics) == {"mse", "mae"}
    assert result.metrics["mse"] == pytest.approx(result.loss)
    assert result.metrics["mse"] < 1.0  # the targets' variance is 24
    assert not result.per_class
    x = np.ones((3, 6), np.float32)
    prediction = client.predict("linear-mlp", x)
    assert prediction.probabilities is None
    assert prediction.top_labels is None
    np.testing.assert_allclose(prediction.raw[:, 0], 11.0, atol=1.5)


def _long_job(client: Client, model: str) -> "object":
    return client.train(model, "digits", epochs=10_000, patience=0, batch_size=8)


def _wait_for(job, kind: str, after_seq: int = 0) -> None:
    for event in job.events(after_seq):
        if event.WhichOneof("kind") == kind:
            return
    raise AssertionError(f"the job ended before a {kind} event")


def test_cancel_running_job_keeps_checkpoint_and_predict_stays_responsive(
    client: Client, server, digits_model: str
) -> None:
    job = _long_job(client, "cancelled-model")
    _wait_for(job, "epoch_end")
    x, y = BUILTIN_DATASETS["digits"].load("test")
    # Predict answers, and correctly, while a job trains in its worker process.
    for _ in range(5):
        assert (client.predict(digits_model, x).top_indices[:, 0] == y).mean() > 0.9
    cancelled = job.cancel()
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert cancelled.error == "cancelled by client"
    assert cancelled.history
    assert list(job.events())[-1].cancelled.reason == "cancelled by client"
    last = server.store.layout.job_dir(job.id) / "last.pt"
    module, _ = load_model(last, torch.device("cpu"))
    assert module(torch.from_numpy(x[:2])).shape == (2, 10)
    assert "cancelled-model" not in {m.name for m in client.models()}
    with pytest.raises(JobError, match="cancelled"):
        job.wait()


def test_queue_limits_and_queued_cancel(tmp_path) -> None:
    server = start_server(tmp_path, max_concurrent_jobs=1, max_queued_jobs=1)
    try:
        with Client(server.address) as client:
            running = _long_job(client, "a")
            queued = _long_job(client, "b")
            assert queued.info().state == pb.JOB_STATE_QUEUED
            with pytest.raises(grpc.RpcError, match="max_queued_jobs=1") as info:
                _long_job(client, "c")
            assert info.value.code().name == "RESOURCE_EXHAUSTED"
            assert queued.cancel().state == pb.JOB_STATE_CANCELLED
            assert [e.WhichOneof("kind") for e in queued.events()] == ["queued", "cancelled"]
            _wait_for(running, "started")
            assert running.cancel().state == pb.JOB_STATE_CANCELLED
            assert {j.id for j in client.jobs(state="cancelled")} == {running.id, queued.id}
    finally:
        server.stop(grace=1)


def test_shutdown_interrupts_running_jobs_and_resume_continues_them(tmp_path) -> None:
    server = start_server(tmp_path)
    with Client(server.address) as client:
        job = _long_job(client, "interrupted")
        _wait_for(job, "epoch_end")
        process = next(iter(server.jobs._running.values())).process
        server.stop(grace=5)
    assert not process.is_alive()
    # A new server on the same store sees the job as interrupted, and resumes it.
    again = start_server(tmp_path)
    try:
        with Client(again.address) as client:
            job = client.job(job.id)
            info = job.info()
            assert info.state == pb.JOB_STATE_INTERRUPTED
            assert info.error == "server shutdown"
            last = list(job.events())[-1]
            interrupted = last.interrupted
            assert interrupted.checkpoint_epoch >= 1
            assert job.resume().state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
            resumed = next(
                e.started
                for e in job.events(after_seq=last.seq)
                if e.WhichOneof("kind") == "started"
            )
            assert resumed.start_epoch == interrupted.checkpoint_epoch + 1
            _wait_for(job, "epoch_end", after_seq=last.seq)
            assert job.cancel().state == pb.JOB_STATE_CANCELLED
    finally:
        again.stop(grace=1)


def test_interrupted_jobs_are_marked_on_restart(tmp_path) -> None:
    server = start_server(tmp_path)
    spec = TrainSpec("ghost", "digits", "train", "mlp", MLPParams(), TrainConfig())
    server.store.registry.create_job("deadbeef", spec)
    server.stop(grace=1)
    again = start_server(tmp_path)
    try:
        with Client(again.address) as client:
            events = list(client.job("deadbeef").events())
            assert events[-1].interrupted.reason == "the server stopped while the job was queued"
            assert events[-1].interrupted.checkpoint_epoch == 0
            assert client.job("deadbeef").info().state == pb.JOB_STATE_INTERRUPTED
    finally:
        again.stop(grace=1)


def test_message_limit_is_enforced_and_named(tmp_path) -> None:
    server = start_server(tmp_path, max_message_bytes=1024 * 1024)
    try:
        with Client(server.address) as client:
            big = np.zeros((600, 1, 8, 8), np.float32)  # about 150 KB: fine
            with pytest.raises(grpc.RpcError, match="does not exist"):
                client.predict("nothing", big)
            huge = np.zeros((5000, 1, 8, 8), np.float32)  # about 1.3 MB: over the limit
            with pytest.raises(grpc.RpcError) as info:
                client.predict("nothing", huge)
            assert info.value.code().name == "RESOURCE_EXHAUSTED"
            client.wait_ready()
    finally:
        server.stop(grace=1)
