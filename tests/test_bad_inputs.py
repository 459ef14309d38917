"""Bad input to every RPC gets a clear status naming the field and the value, and the server
keeps serving afterwards."""

import grpc
import numpy as np
import pytest
import torch

from tests.conftest import assert_rejected, assert_status
from torchwire.client import Client
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture(autouse=True)
def still_serving(client: Client, digits_model: str):
    """After every bad request, a good Predict still answers correctly."""
    yield
    x, y = BUILTIN_DATASETS["digits"].load("test")
    assert (client.predict(digits_model, x[:64]).top_indices[:, 0] == y[:64]).mean() > 0.8


def _digits_chunk(n: int = 4) -> pb.UploadChunk:
    x, y = BUILTIN_DATASETS["digits"].load("train")
    return pb.UploadChunk(features=tensors.encode(x[:n]), targets=tensors.encode(y[:n]))


def _upload(client: Client, *messages: pb.UploadDatasetRequest) -> pb.Dataset:
    return client.stub.UploadDataset(iter(messages))


def _header(name: str = "ok-name", split: str = "train", classes=()) -> pb.UploadDatasetRequest:
    return pb.UploadDatasetRequest(
        header=pb.UploadHeader(name=name, split=split, classes=list(classes))
    )


def _chunk(features: np.ndarray, targets: np.ndarray) -> pb.UploadDatasetRequest:
    return pb.UploadDatasetRequest(
        chunk=pb.UploadChunk(features=tensors.encode(features), targets=tensors.encode(targets))
    )


F32 = np.zeros((4, 3), np.float32)
I64 = np.zeros(4, np.int64)

UPLOAD_CASES = {
    "no header": ([pb.UploadDatasetRequest(chunk=_digits_chunk())], "header"),
    "empty stream": ([], "header"),
    "two headers": ([_header(), _header()], "chunk[0]"),
    "path in name": ([_header("../etc"), _chunk(F32, I64)], "header.name='../etc'"),
    "empty name": ([_header(""), _chunk(F32, I64)], "header.name=''"),
    "built-in name": ([_header("digits"), _chunk(F32, I64)], "header.name='digits'"),
    "unknown split": ([_header(split="validation"), _chunk(F32, I64)], "header.split='validation'"),
    "no samples": ([_header()], "upload holds no samples"),
    "int features": (
        [_header(), _chunk(np.zeros((4, 3), np.int64), I64)],
        "chunk[0].features.dtype='int64'",
    ),
    "bad byte count": (
        [
            _header(),
            pb.UploadDatasetRequest(
                chunk=pb.UploadChunk(
                    features=pb.Tensor(dtype="float32", shape=[4, 3], data=b"\0" * 47),
                    targets=tensors.encode(I64),
                )
            ),
        ],
        "chunk[0].features: data has 47 bytes",
    ),
    "unknown dtype": (
        [
            _header(),
            pb.UploadDatasetRequest(
                chunk=pb.UploadChunk(
                    features=pb.Tensor(dtype="complex64", shape=[1], data=b"\0" * 8),
                    targets=tensors.encode(I64),
                )
            ),
        ],
        "chunk[0].features: dtype 'complex64'",
    ),
    "target count": ([_header(), _chunk(F32, np.zeros(3, np.int64))], "chunk[0].targets.shape=[3]"),
    "negative class": ([_header(), _chunk(F32, -np.ones(4, np.int64))], "chunk[0].targets=-1"),
    "shape changes": (
        [_header(), _chunk(F32, I64), _chunk(np.zeros((4, 5), np.float32), I64)],
        "chunk[1].features.shape=[4, 5]",
    ),
    "too few class names": (
        [_header(classes=["a"]), _chunk(F32, np.arange(4))],
        "header.classes=['a']",
    ),
    "duplicate class names": (
        [_header(classes=["a", "a"]), _chunk(F32, I64)],
        "header.classes=['a', 'a']",
    ),
    "nan targets": ([_header(), _chunk(F32, np.full(4, np.nan, np.float32))], "chunk[0].targets"),
    "scalar features": (
        [_header(), _chunk(np.zeros(4, np.float32), I64)],
        "chunk[0].features.shape=[4]",
    ),
}


@pytest.mark.parametrize("case", UPLOAD_CASES)
def test_upload_dataset_rejects(client: Client, server, case: str) -> None:
    messages, fragment = UPLOAD_CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        _upload(client, *messages)
    assert_status(info.value, INVALID, fragment)
    # Nothing half-written is left behind, and no dataset was registered.
    assert not list(server.store.layout.datasets.glob(".upload-*"))
    assert "ok-name" not in {d.name for d in client.datasets()}


def test_upload_over_the_size_limit_is_resource_exhausted(tmp_path) -> None:
    from tests.conftest import start_server

    server = start_server(tmp_path, max_upload_bytes=1000)
    try:
        with Client(server.address) as client, pytest.raises(grpc.RpcError) as info:
            client.upload_dataset("big", np.zeros((100, 3), np.float32), np.zeros(100, np.int64))
        assert_status(info.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_upload_bytes=1000")
        assert not list(server.store.layout.datasets.glob(".upload-*"))
    finally:
        server.stop(grace=1)


def _train(client: Client, **overrides) -> pb.Job:
    request = pb.TrainRequest(model_name="m", dataset=pb.DatasetRef(name="digits"))
    for path, value in overrides.items():
        target = request
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, list):
            getattr(target, leaf).extend(value)
        elif isinstance(value, pb.ModelSpec):
            target.model.CopyFrom(value)
        else:
            setattr(target, leaf, value)
    return client.stub.Train(request)


TRAIN_CASES = {
    "empty model name": ({"model_name": ""}, INVALID, "model_name=''"),
    "slash in model name": ({"model_name": "a/b"}, INVALID, "model_name='a/b'"),
    "no dataset": ({"dataset__name": ""}, INVALID, "dataset.name=''"),
    "unknown dataset": ({"dataset__name": "nope"}, NOT_FOUND, "'nope'"),
    "bad dataset name": ({"dataset__name": "../x"}, INVALID, "dataset.name='../x'"),
    "unknown split": ({"dataset__split": "dev"}, INVALID, "dataset.split='dev'"),
    "zero epochs": ({"config__epochs": 0}, INVALID, "config.epochs=0"),
    "negative batch": ({"config__batch_size": -1}, INVALID, "config.batch_size=-1"),
    "nan learning rate": (
        {"config__learning_rate": float("nan")},
        INVALID,
        "config.learning_rate=nan",
    ),
    "unknown optimizer": ({"config__optimizer": "lbfgs"}, INVALID, "config.optimizer='lbfgs'"),
    "unknown loss": ({"config__loss": "hinge"}, INVALID, "config.loss='hinge'"),
    "loss for another task": ({"config__loss": "mse"}, INVALID, "config.loss='mse'"),
    "val fraction": ({"config__val_fraction": 0.95}, INVALID, "config.val_fraction=0.95"),
    "momentum": ({"config__momentum": 1.5}, INVALID, "config.momentum=1.5"),
    "patience": ({"config__patience": -2}, INVALID, "config.patience=-2"),
    "workers": ({"config__num_workers": 99}, INVALID, "config.num_workers=99"),
    "unknown device": ({"config__device": "tpu"}, INVALID, "config.device='tpu'"),
    "hidden size": (
        {"model": pb.ModelSpec(mlp=pb.MLPSpec(hidden_sizes=[64, 0]))},
        INVALID,
        "model.mlp.hidden_sizes=[64, 0]",
    ),
    "dropout": (
        {"model": pb.ModelSpec(cnn=pb.CNNSpec(dropout=1.0))},
        INVALID,
        "model.cnn.dropout=1.0",
    ),
    "drop every batch": (
        {"config__drop_last": True, "config__batch_size": 5000},
        INVALID,
        "config.drop_last=True",
    ),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_rejects(client: Client, case: str) -> None:
    overrides, code, fragment = TRAIN_CASES[case]
    jobs_before = len(client.jobs(limit=1000))
    with pytest.raises(grpc.RpcError) as info:
        _train(client, **overrides)
    assert_status(info.value, code, fragment)
    assert len(client.jobs(limit=1000)) == jobs_before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present on this machine")
def test_train_on_missing_cuda_is_invalid(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _train(client, config__device="cuda")
    assert_status(info.value, INVALID, "config.device='cuda'", "not available")


def test_cnn_needs_image_data(client: Client, regression_data: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _train(
            client,
            dataset__name=regression_data,
            config__loss="mse",
            model=pb.ModelSpec(cnn=pb.CNNSpec()),
        )
    assert_status(info.value, INVALID, "model.cnn=[6]", "[C, H, W]")


def test_job_rpcs_reject(client: Client, digits_model: str) -> None:
    cases = [
        (
            lambda: list(client.stub.WatchJob(pb.WatchJobRequest(job_id="nope"))),
            NOT_FOUND,
            "'nope'",
        ),
        (
            lambda: list(client.stub.WatchJob(pb.WatchJobRequest(job_id="x", after_seq=-1))),
            INVALID,
            "after_seq=-1",
        ),
        (lambda: client.stub.GetJob(pb.GetJobRequest(job_id="nope")), NOT_FOUND, "'nope'"),
        (lambda: client.stub.CancelJob(pb.CancelJobRequest(job_id="")), NOT_FOUND, "''"),
        (lambda: client.stub.ListJobs(pb.ListJobsRequest(limit=5000)), INVALID, "limit=5000"),
        (lambda: client.stub.ListJobs(pb.ListJobsRequest(limit=-1)), INVALID, "limit=-1"),
        (lambda: client.stub.ListJobs(pb.ListJobsRequest(state=99)), INVALID, "state=99"),
        (
            lambda: client.stub.ListJobs(pb.ListJobsRequest(model_name="a b")),
            INVALID,
            "model_name='a b'",
        ),
    ]
    for call, code, fragment in cases:
        assert_rejected(call, code, fragment)
    finished = client.jobs(state="succeeded", model_name=digits_model)[0]
    with pytest.raises(grpc.RpcError) as info:
        client.stub.CancelJob(pb.CancelJobRequest(job_id=finished.id))
    assert_status(info.value, grpc.StatusCode.FAILED_PRECONDITION, finished.id, "succeeded")


def _predict(client: Client, model: str, **fields) -> pb.PredictResponse:
    x, _ = BUILTIN_DATASETS["digits"].load("test")
    request = pb.PredictRequest(model_name=model, inputs=tensors.encode(x[:2]))
    for name, value in fields.items():
        if isinstance(value, pb.Tensor):
            request.inputs.CopyFrom(value)
        elif isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return client.stub.Predict(request)


PREDICT_CASES = {
    "unknown model": ({"model_name": "nope"}, NOT_FOUND, "'nope'"),
    "bad model name": ({"model_name": "../../etc"}, INVALID, "model_name='../../etc'"),
    "unknown version": ({"version": 999}, NOT_FOUND, "no version 999"),
    "negative version": ({"version": -1}, INVALID, "version=-1"),
    "wrong dtype": (
        {"inputs": tensors.encode(np.zeros((2, 1, 8, 8), np.int64))},
        INVALID,
        "inputs.dtype='int64'",
    ),
    "float64 beyond float32": (
        {"inputs": tensors.encode(np.full((2, 1, 8, 8), -1e300))},
        INVALID,
        "inputs.data=-1e+300: is beyond float32's range",
    ),
    "wrong shape": (
        {"inputs": tensors.encode(np.zeros((2, 64), np.float32))},
        INVALID,
        "inputs.shape=[2, 64]",
        "[n, 1, 8, 8]",
    ),
    "no samples": (
        {"inputs": tensors.encode(np.zeros((0, 1, 8, 8), np.float32))},
        INVALID,
        "inputs.shape=[0, 1, 8, 8]",
    ),
    "byte count": (
        {"inputs": pb.Tensor(dtype="float32", shape=[2, 1, 8, 8], data=b"1234")},
        INVALID,
        "inputs: data has 4 bytes",
    ),
    "negative dim": (
        {"inputs": pb.Tensor(dtype="float32", shape=[-2, 1, 8, 8])},
        INVALID,
        "inputs: shape [-2, 1, 8, 8]",
    ),
    "unknown dtype": (
        {"inputs": pb.Tensor(dtype="float8", shape=[1], data=b"1")},
        INVALID,
        "inputs: dtype 'float8'",
    ),
    "unknown output": ({"outputs": [7]}, INVALID, "outputs=[7]"),
    "negative top_k": ({"top_k": -3}, INVALID, "top_k=-3"),
}


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predict_rejects(client: Client, digits_model: str, case: str) -> None:
    fields, code, fragment_a, *more = (*PREDICT_CASES[case][:2], *PREDICT_CASES[case][2:])
    fields = dict(fields)
    model = fields.pop("model_name", digits_model)
    with pytest.raises(grpc.RpcError) as info:
        _predict(client, model, **fields)
    assert_status(info.value, code, fragment_a, *more)


def test_predict_class_outputs_of_a_regression_model(client: Client, regression_data: str) -> None:
    client.train("linear-small", regression_data, loss="mse", epochs=1).wait()
    x = tensors.encode(np.zeros((2, 6), np.float32))
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Predict(
            pb.PredictRequest(
                model_name="linear-small", inputs=x, outputs=[pb.PREDICT_OUTPUT_PROBABILITIES]
            )
        )
    assert_status(info.value, INVALID, "outputs=['probabilities']", "regression")


def test_evaluate_rejects(client: Client, digits_model: str, regression_data: str) -> None:
    def evaluate(**fields):
        request = pb.EvaluateRequest(model_name=digits_model, dataset=pb.DatasetRef(name="digits"))
        for name, value in fields.items():
            if name.startswith("dataset__"):
                setattr(request.dataset, name.removeprefix("dataset__"), value)
            else:
                setattr(request, name, value)
        return client.stub.Evaluate(request)

    cases = [
        ({"model_name": "nope"}, NOT_FOUND, "'nope'"),
        ({"version": 42}, NOT_FOUND, "no version 42"),
        ({"dataset__name": ""}, INVALID, "dataset.name=''"),
        ({"dataset__name": "nope"}, NOT_FOUND, "'nope'"),
        ({"dataset__split": "validation"}, INVALID, "dataset.split='validation'"),
        (
            {"dataset__name": regression_data},
            INVALID,
            f"dataset.name='{regression_data}'",
            "shape [6]",
        ),
        ({"batch_size": -5}, INVALID, "batch_size=-5"),
        ({"batch_size": 100_000}, INVALID, "batch_size=100000"),
    ]
    for fields, code, *fragments in cases:
        assert_rejected(lambda f=fields: evaluate(**f), code, *fragments)


def test_model_rpcs_reject(client: Client, digits_model: str) -> None:
    cases = [
        (lambda: client.stub.GetModel(pb.GetModelRequest(name="nope")), NOT_FOUND, "'nope'"),
        (lambda: client.stub.GetModel(pb.GetModelRequest(name="")), INVALID, "name=''"),
        (lambda: client.stub.DeleteModel(pb.DeleteModelRequest(name="nope")), NOT_FOUND, "'nope'"),
        (
            lambda: client.stub.DeleteModel(pb.DeleteModelRequest(name=digits_model, version=77)),
            NOT_FOUND,
            "no version 77",
        ),
        (
            lambda: client.stub.DeleteModel(pb.DeleteModelRequest(name=digits_model, version=-1)),
            INVALID,
            "version=-1",
        ),
        (
            lambda: client.stub.DeleteModel(pb.DeleteModelRequest(name="x/../../y")),
            INVALID,
            "name='x/../../y'",
        ),
    ]
    for call, code, fragment in cases:
        assert_rejected(call, code, fragment)
    assert client.model(digits_model).versions
