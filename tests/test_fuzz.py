"""Thousands of random and malformed requests to every RPC through a real channel: no answer
may be INTERNAL or UNKNOWN, and the server keeps answering correct requests throughout."""

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import start_server
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.server import TorchwireServer
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
EXAMPLES = 200
#: Names the fuzzer favours: real ones (so that requests reach deep), and hostile ones.
NAMES = [
    "digits",
    "fuzz-mlp",
    "",
    "../etc",
    "a" * 65,
    "x/y",
    "nul\x00",
    "train",
    "test",
    "onnxruntime",
    "eager",
    "adam",
    "cnn",
]
DTYPES = [
    "float32",
    "float64",
    "int64",
    "int32",
    "uint8",
    "bool",
    "float16",
    "",
    "complex64",
    "FP32",
    "INT64",
    "FP16",
    "BYTES",
]
ANCHOR = "anchor"  # a model the fuzzer never names: the liveness check uses it
SERVICE = pb.DESCRIPTOR.services_by_name["TorchWire"]
V2_SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
#: Deterministic (the same examples in every run and on CI), no example database on disk.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchwireServer]:
    server = start_server(
        tmp_path_factory.mktemp("fuzz"),
        max_concurrent_jobs=1,
        max_queued_jobs=1,
        max_upload_bytes=1 << 20,
    )
    with Client(server.address) as client:
        for name in (ANCHOR, "fuzz-mlp"):
            client.train(name, "digits", epochs=1, val_fraction=0).wait()
    yield server
    for job in server.store.registry.active_jobs():
        server.jobs.cancel(job.id)
    server.stop(grace=5)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        names = DTYPES if field.name in ("dtype", "datatype") else NAMES
        return st.sampled_from(names) | st.text(max_size=12)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 64 if kind == FieldDescriptor.TYPE_DOUBLE else 32
        return st.floats(width=width) | st.sampled_from([0.0, 1e-4, 0.5, 1.0, 1e30])
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-1, 10)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        bits = 64 if kind == FieldDescriptor.TYPE_UINT64 else 32
        return st.integers(0, 70) | st.integers(0, 2**bits - 1)
    bits = 64 if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64) else 32
    return st.integers(-3, 70) | st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Any message of this type: each field absent or random, nested messages included."""
    fields: dict[str, st.SearchStrategy] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if (
                depth > 3
                or field.message_type.GetOptions().map_entry
                or field.message_type.full_name.startswith("google.protobuf")
            ):
                continue
            value = messages(field.message_type, depth + 1)
        else:
            value = _scalar(field)
        repeated = field.is_repeated
        fields[field.name] = st.lists(value, max_size=4) if repeated else value
    message_type = message_factory.GetMessageClass(descriptor)
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: message_type(**kw))


def _call(client: Client, method, request) -> None:
    """Sends one request (or stream of requests) the way the method's kind needs."""
    stub = (
        client.stub
        if method.containing_service is SERVICE
        else v2_grpc.GRPCInferenceServiceStub(client.channel)
    )
    _send(getattr(stub, method.name), method, request)


def _send(call, method, request) -> None:
    """Sends `request` through `call` (a stub method or a raw one) and reads the answer, which
    may be an error, but never INTERNAL or UNKNOWN."""
    code, details = grpc.StatusCode.OK, ""
    try:
        result = call(iter(request) if method.client_streaming else request, timeout=30)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as err:
        code, details = err.code(), err.details()
    assert code not in FORBIDDEN, f"{method.name}: {code}: {details}"


def _still_serving(client: Client) -> None:
    x, y = BUILTIN_DATASETS["digits"].load("test")
    result = client.predict(ANCHOR, x[:64], outputs=["top_k"])
    assert (result.top_indices[:, 0] == y[:64]).mean() > 0.5


@pytest.mark.parametrize(
    "method", [*SERVICE.methods, *V2_SERVICE.methods], ids=lambda m: m.full_name
)
def test_random_requests_never_break_the_server(fuzz_server: TorchwireServer, method) -> None:
    request_type = messages(method.input_type)
    strategy = st.lists(request_type, max_size=4) if method.client_streaming else request_type

    with Client(fuzz_server.address) as client:

        @FUZZ
        @given(strategy)
        def fuzz(request) -> None:
            _call(client, method, request)

        fuzz()
        _still_serving(client)


@pytest.mark.parametrize(
    "method", [*SERVICE.methods, *V2_SERVICE.methods], ids=lambda m: m.full_name
)
def test_random_bytes_never_break_the_server(fuzz_server: TorchwireServer, method) -> None:
    """Raw bytes on the wire, most of them no message at all: never INTERNAL or UNKNOWN."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    payloads = st.binary(max_size=200)
    with grpc.insecure_channel(fuzz_server.address) as channel:
        if method.client_streaming:
            call = (channel.stream_stream if method.server_streaming else channel.stream_unary)(
                path
            )
            strategy = st.lists(payloads, max_size=3)
        else:
            call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(path)
            strategy = payloads

        @settings(FUZZ, max_examples=EXAMPLES // 2)
        @given(strategy)
        def fuzz(payload) -> None:
            _send(call, method, payload)

        fuzz()
    with Client(fuzz_server.address) as client:
        _still_serving(client)


def test_valid_looking_tensors_with_random_shapes(fuzz_server: TorchwireServer) -> None:
    """Predict with well-formed tensors of every dtype and random shapes, including ones whose
    element count overflows."""
    with Client(fuzz_server.address) as client:

        @settings(FUZZ, max_examples=300)
        @given(
            st.sampled_from(DTYPES),
            st.lists(st.integers(-1, 2**62), max_size=5),
            st.integers(0, 4096),
        )
        def fuzz(dtype: str, shape: list[int], size: int) -> None:
            tensor = pb.Tensor(dtype=dtype, shape=shape, data=np.zeros(size, np.uint8).tobytes())
            _call(
                client,
                SERVICE.methods_by_name["Predict"],
                pb.PredictRequest(model_name=ANCHOR, inputs=tensor),
            )

        fuzz()
        _still_serving(client)


def test_near_valid_predicts(fuzz_server: TorchwireServer) -> None:
    """Correct inputs for a real model, with every other field random."""
    x, _ = BUILTIN_DATASETS["digits"].load("test")
    with Client(fuzz_server.address) as client:

        @settings(FUZZ, max_examples=300)
        @given(
            st.integers(1, 40),
            st.lists(st.integers(-1, 5), max_size=4),
            st.integers(-2, 20),
            st.sampled_from(["", "eager", "torchscript", "onnxruntime", "tensorrt"]),
            st.integers(-1, 3),
        )
        def fuzz(n: int, outputs: list[int], top_k: int, runtime: str, version: int) -> None:
            request = pb.PredictRequest(
                model_name="fuzz-mlp",
                inputs=tensors.encode(x[:n]),
                outputs=outputs,
                top_k=top_k,
                runtime=runtime,
                version=version,
            )
            _call(client, SERVICE.methods_by_name["Predict"], request)

        fuzz()
        _still_serving(client)


def test_near_valid_uploads(fuzz_server: TorchwireServer) -> None:
    """A valid header, then chunks of random dtypes, shapes and values."""
    arrays = st.sampled_from(["float32", "float64", "int64", "int32", "uint8", "bool"]).flatmap(
        lambda dtype: st.lists(st.integers(0, 4), min_size=1, max_size=3).map(
            lambda shape: np.random.default_rng(sum(shape)).normal(size=shape).astype(dtype)
        )
    )
    chunks = st.lists(st.tuples(arrays, arrays), min_size=0, max_size=3)
    with Client(fuzz_server.address) as client:

        @settings(FUZZ, max_examples=300)
        @given(
            st.sampled_from(["train", "test", "dev"]),
            st.lists(st.text(max_size=3), max_size=3),
            chunks,
        )
        def fuzz(split: str, classes: list[str], parts: list) -> None:
            requests = [
                pb.UploadDatasetRequest(
                    header=pb.UploadHeader(name="fuzz-data", split=split, classes=classes)
                )
            ]
            requests += [
                pb.UploadDatasetRequest(
                    chunk=pb.UploadChunk(features=tensors.encode(f), targets=tensors.encode(t))
                )
                for f, t in parts
            ]
            _call(client, SERVICE.methods_by_name["UploadDataset"], requests)

        fuzz()
        _still_serving(client)
        assert not list(fuzz_server.store.layout.datasets.glob(".upload-*"))
