"""The Open Inference Protocol v2 (inference.GRPCInferenceService) on the torchwire port,
checked against torchwire's own Predict."""

import io
import os
import queue
import struct
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from PIL import Image

from tests.conftest import assert_rejected
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.app.shared_memory import SharedMemoryRegistry, Window
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.errors import NotFound

X_TEST, _ = BUILTIN_DATASETS["digits"].load("test")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stub(client: Client) -> v2_grpc.GRPCInferenceServiceStub:
    return v2_grpc.GRPCInferenceServiceStub(client.channel)


def _raw_request(model: str, batch: np.ndarray, outputs=(), version: str = ""):
    return v2.ModelInferRequest(
        model_name=model,
        model_version=version,
        id="req-1",
        inputs=[
            v2.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=list(batch.shape)
            )
        ],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
        raw_input_contents=[batch.astype("<f4").tobytes()],
    )


def _outputs(response: v2.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    return {
        o.name: np.frombuffer(raw, dtypes[o.datatype]).reshape(tuple(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def test_server_calls(stub, client: Client) -> None:
    assert stub.ServerLive(v2.ServerLiveRequest()).live
    assert stub.ServerReady(v2.ServerReadyRequest()).ready
    assert stub.ServerMetadata(v2.ServerMetadataRequest()).name == "torchwire"
    services = ProtoReflectionDescriptorDatabase(client.channel).get_services()
    assert "inference.GRPCInferenceService" in services


def test_model_metadata_and_readiness(stub, digits_model: str) -> None:
    meta = stub.ModelMetadata(v2.ModelMetadataRequest(name=digits_model))
    assert meta.platform == "pytorch_torchwire"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 1, 8, 8])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("output", "FP32", [-1, 10]),
        ("probabilities", "FP32", [-1, 10]),
        ("class", "INT64", [-1, 1]),
    ]
    assert stub.ModelReady(v2.ModelReadyRequest(name=digits_model)).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name=digits_model, version="1")).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name=digits_model, version="999")).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name="no-such-model")).ready


def test_model_infer_raw_and_typed_match_predict(stub, client: Client, digits_model: str) -> None:
    batch = X_TEST[:9]
    expected = client.predict(digits_model, batch, top_k=1)
    raw = stub.ModelInfer(_raw_request(digits_model, batch))
    assert raw.id == "req-1"
    assert raw.model_version == str(expected.version)
    got = _outputs(raw)
    np.testing.assert_allclose(got["output"], expected.raw, atol=1e-6)
    np.testing.assert_allclose(got["probabilities"], expected.probabilities, atol=1e-6)
    np.testing.assert_array_equal(got["class"], expected.top_indices)  # INT64

    typed = v2.ModelInferRequest(
        model_name=digits_model,
        inputs=[
            v2.ModelInferRequest.InferInputTensor(
                name="input",
                datatype="FP32",
                shape=list(batch.shape),
                contents=v2.InferTensorContents(fp32_contents=batch.ravel().tolist()),
            )
        ],
    )
    np.testing.assert_allclose(_outputs(stub.ModelInfer(typed))["output"], expected.raw, atol=1e-6)


def test_requested_outputs_and_version_selection(stub, digits_model: str) -> None:
    response = stub.ModelInfer(
        _raw_request(digits_model, X_TEST[:3], outputs=["class"], version="1")
    )
    assert [o.name for o in response.outputs] == ["class"]
    assert response.model_version == "1"
    assert _outputs(response)["class"].shape == (3, 1)


def test_model_infer_rejects(stub, digits_model: str) -> None:
    good = _raw_request(digits_model, X_TEST[:2])

    def altered(change):
        request = v2.ModelInferRequest()
        request.CopyFrom(good)
        change(request)
        return lambda: stub.ModelInfer(request)

    cases = [
        (
            lambda r: setattr(r, "model_name", "no-such-model"),
            grpc.StatusCode.NOT_FOUND,
            "'no-such-model'",
        ),
        (lambda r: setattr(r, "model_version", "abc"), INVALID, "model_version='abc'"),
        (lambda r: setattr(r, "model_version", "77"), grpc.StatusCode.NOT_FOUND, "no version 77"),
        (lambda r: setattr(r.inputs[0], "name", "x"), INVALID, "inputs[0].name='x'"),
        (
            lambda r: setattr(r.inputs[0], "datatype", "STRING"),
            INVALID,
            "inputs[0].datatype='STRING'",
        ),
        (lambda r: setattr(r.inputs[0], "datatype", "INT64"), INVALID, "raw_input_contents[0]"),
        (lambda r: r.inputs.add(name="input", datatype="FP32"), INVALID, "inputs=2"),
        (
            lambda r: r.raw_input_contents.__setitem__(0, b"1234"),
            INVALID,
            "raw_input_contents[0]=<4 bytes>: has 4 bytes",
        ),
        (lambda r: r.outputs.add(name="logits"), INVALID, "outputs[0].name='logits'"),
        (
            lambda r: (
                r.ClearField("raw_input_contents"),
                r.inputs[0].contents.fp32_contents.extend([1.0, 2.0]),
            ),
            INVALID,
            "holds 2 values",
        ),
    ]
    for change, code, fragment in cases:
        assert_rejected(altered(change), code, fragment)
    int_model_input = _raw_request(digits_model, X_TEST[:2])
    int_model_input.inputs[0].datatype = "FP64"
    int_model_input.raw_input_contents[0] = X_TEST[:2].astype("<f8").tobytes()
    assert_rejected(
        lambda: stub.ModelInfer(int_model_input), INVALID, "inputs[0].datatype='FP64'", "takes FP32"
    )


def test_metadata_and_readiness_reject(stub, digits_model: str) -> None:
    cases = [
        (
            lambda: stub.ModelMetadata(v2.ModelMetadataRequest(name="no-such-model")),
            grpc.StatusCode.NOT_FOUND,
            "'no-such-model'",
        ),
        (lambda: stub.ModelMetadata(v2.ModelMetadataRequest(name="../x")), INVALID, "name='../x'"),
        (
            lambda: stub.ModelMetadata(v2.ModelMetadataRequest(name=digits_model, version="v1")),
            INVALID,
            "version='v1'",
        ),
        (lambda: stub.ModelReady(v2.ModelReadyRequest(name="../x")), INVALID, "'../x'"),
        (
            lambda: stub.ModelReady(v2.ModelReadyRequest(name=digits_model, version="-1")),
            INVALID,
            "version='-1'",
        ),
    ]
    for call, code, fragment in cases:
        assert_rejected(call, code, fragment)


def _png(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _bytes_request(model: str, elements: list[bytes], raw: bool) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="BYTES", shape=[len(elements), 1])
    if raw:
        serialized = b"".join(struct.pack("<I", len(e)) + e for e in elements)
        request.raw_input_contents.append(serialized)
    else:
        tensor.contents.bytes_contents.extend(elements)
    return request


def test_stream_infer_answers_in_order_with_errors_in_place(
    stub, client: Client, digits_model: str
) -> None:
    batches = [X_TEST[i : i + 1 + i % 3] for i in range(12)]
    requests = [_raw_request(digits_model, b) for b in batches]
    for i, request in enumerate(requests):
        request.id = f"r{i}"
    requests[5].inputs[0].name = "pixels"
    requests[9].model_name = "no-such-model"
    answers = list(stub.ModelStreamInfer(iter(requests)))
    assert len(answers) == len(requests)
    for i, (answer, batch) in enumerate(zip(answers, batches, strict=True)):
        if i == 5:
            assert "inputs[0].name='pixels'" in answer.error_message
        elif i == 9:
            assert "'no-such-model'" in answer.error_message
        else:
            assert not answer.error_message
            assert answer.infer_response.id == f"r{i}"
            expected = client.predict(digits_model, batch).raw
            got = _outputs(answer.infer_response)["output"]
            np.testing.assert_allclose(got, expected, atol=1e-6)


def test_model_config(stub, digits_model: str, colour_model: str) -> None:
    config = stub.ModelConfig(v2.ModelConfigRequest(name=digits_model)).config
    assert config.name == digits_model
    assert config.platform == "pytorch_torchwire"
    assert config.max_batch_size == 64
    assert config.dynamic_batching.preferred_batch_size == [64]
    assert config.dynamic_batching.preserve_ordering
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", v2.TYPE_FP32, [1, 8, 8])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("output", [10]),
        ("probabilities", [10]),
        ("class", [1]),
    ]
    assert config.instance_group[0].kind == v2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["task"].string_value == "classification"
    images = stub.ModelConfig(v2.ModelConfigRequest(name=colour_model, version="1")).config
    assert images.input[0].format == v2.ModelInput.FORMAT_NCHW
    assert images.parameters["image_mode"].string_value == "RGB"
    for request, code, fragment in [
        (v2.ModelConfigRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
        (v2.ModelConfigRequest(name=digits_model, version="x"), INVALID, "version='x'"),
        (v2.ModelConfigRequest(name=digits_model, version="99"), grpc.StatusCode.NOT_FOUND, "99"),
    ]:
        assert_rejected(lambda r=request: stub.ModelConfig(r), code, fragment)


def _stats(stub, model: str):
    (stats,) = stub.ModelStatistics(v2.ModelStatisticsRequest(name=model, version="1")).model_stats
    return stats


def test_statistics_count_requests_runs_and_failures(stub, client: Client, digits_model) -> None:
    before = _stats(stub, digits_model)
    for rows in (1, 3, 5):
        stub.ModelInfer(_raw_request(digits_model, X_TEST[:rows]))
    client.predict(digits_model, X_TEST[:2])  # torchwire.v1 counts too
    bad = _raw_request(digits_model, X_TEST[:2])
    bad.inputs[0].shape[:] = [2, 64]
    assert_rejected(lambda: stub.ModelInfer(bad), INVALID, "inputs[0].shape")
    after = _stats(stub, digits_model)
    assert after.inference_stats.success.count - before.inference_stats.success.count == 4
    assert after.inference_count - before.inference_count == 11
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.execution_count - before.execution_count >= 4
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference > 0
    sizes = {b.batch_size for b in after.batch_stats}
    assert {1, 3, 5} <= sizes
    assert after.memory_usage[0].type == "CPU"
    assert after.memory_usage[0].byte_size > 0
    everything = stub.ModelStatistics(v2.ModelStatisticsRequest()).model_stats
    assert (digits_model, "1") in {(s.name, s.version) for s in everything}
    for request, code, fragment in [
        (v2.ModelStatisticsRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
        (v2.ModelStatisticsRequest(name=digits_model, version="-1"), INVALID, "version='-1'"),
        (v2.ModelStatisticsRequest(version="1"), INVALID, "needs a model name"),
    ]:
        assert_rejected(lambda r=request: stub.ModelStatistics(r), code, fragment)


def test_repository_index_load_and_unload(stub, digits_model: str) -> None:
    def state() -> str:
        index = stub.RepositoryIndex(v2.RepositoryIndexRequest()).models
        return {(m.name, m.version): m.state for m in index}[(digits_model, "1")]

    stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name=digits_model))
    assert state() == "UNAVAILABLE"
    ready = stub.RepositoryIndex(v2.RepositoryIndexRequest(ready=True)).models
    assert digits_model not in {m.name for m in ready}
    stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name=digits_model))
    assert state() == "READY"
    not_found = grpc.StatusCode.NOT_FOUND
    parameters = {"config": v2.ModelRepositoryParameter(string_param="{}")}
    for call, code, fragment in [
        (
            lambda: stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name="nope")),
            not_found,
            "'nope'",
        ),
        (
            lambda: stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name="../x")),
            INVALID,
            "'../x'",
        ),
        (
            lambda: stub.RepositoryIndex(v2.RepositoryIndexRequest(repository_name="other")),
            not_found,
            "repository_name='other'",
        ),
        (
            lambda: stub.RepositoryModelLoad(
                v2.RepositoryModelLoadRequest(model_name=digits_model, parameters=parameters)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "parameters=['config']",
        ),
    ]:
        assert_rejected(call, code, fragment)


def test_png_images_as_bytes_match_predict(
    stub, client: Client, colour_model: str, data_root: Path, colours: dict[str, str]
) -> None:
    pngs = [_png(p) for p in sorted((data_root / colours["test"]).glob("*.png"))[:5]]
    expected = client.predict(colour_model, images=pngs)
    for raw in (True, False):
        response = stub.ModelInfer(_bytes_request(colour_model, pngs, raw))
        got = _outputs(response)
        np.testing.assert_allclose(got["output"], expected.raw, atol=1e-5)
        np.testing.assert_array_equal(got["class"], expected.top_indices)


def test_bytes_inputs_reject(stub, digits_model: str, colour_model: str) -> None:
    png = _bytes_request(colour_model, [b"not an image"], raw=False)
    to_tensors = _bytes_request(digits_model, [b"x"], raw=False)
    truncated = _bytes_request(colour_model, [b"abc"], raw=True)
    truncated.raw_input_contents[0] = struct.pack("<I", 10) + b"abc"
    flat = _bytes_request(colour_model, [b"abc"], raw=False)
    flat.inputs[0].shape[:] = [1, 2]
    for request, fragment in [
        (png, "image"),
        (to_tensors, "inputs[0].datatype='BYTES'"),
        (truncated, "raw_input_contents[0]"),
        (flat, "inputs[0].shape"),
    ]:
        assert_rejected(lambda r=request: stub.ModelInfer(r), INVALID, fragment)
    assert stub.ServerLive(v2.ServerLiveRequest()).live


@pytest.fixture
def region():
    """A POSIX shared-memory object of 64 KiB, removed after the test."""
    memory = shared_memory.SharedMemory(name=f"tw-test-{os.getpid()}", create=True, size=1 << 16)
    yield memory
    memory.close()
    memory.unlink()


def _shm(parameters, name: str, size: int, offset: int = 0) -> None:
    parameters["shared_memory_region"].string_param = name
    parameters["shared_memory_byte_size"].int64_param = size
    parameters["shared_memory_offset"].int64_param = offset


def test_system_shared_memory_inputs_and_outputs_match_predict(
    stub, client: Client, digits_model: str, region
) -> None:
    batch = X_TEST[:16].astype("<f4")
    view = np.ndarray((1 << 16,), np.uint8, region.buf)
    view[: batch.nbytes] = batch.view(np.uint8).ravel()
    stub.SystemSharedMemoryRegister(
        v2.SystemSharedMemoryRegisterRequest(
            name="io", key=f"/{region.name}", offset=0, byte_size=1 << 16
        )
    )
    try:
        status = stub.SystemSharedMemoryStatus(v2.SystemSharedMemoryStatusRequest(name="io"))
        assert status.regions["io"].key == f"/{region.name}"
        assert status.regions["io"].byte_size == 1 << 16
        request = v2.ModelInferRequest(model_name=digits_model)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
        _shm(tensor.parameters, "io", batch.nbytes)
        out = request.outputs.add(name="output")
        _shm(out.parameters, "io", 16 * 10 * 4, offset=32768)
        request.outputs.add(name="class")
        response = stub.ModelInfer(request)
        expected = client.predict(digits_model, batch, top_k=1)
        assert response.outputs[0].parameters["shared_memory_byte_size"].int64_param == 640
        # Every output has an entry, empty for the one in shared memory.
        assert [len(raw) for raw in response.raw_output_contents] == [0, 16 * 8]
        written = np.frombuffer(bytes(region.buf[32768 : 32768 + 640]), "<f4").reshape(16, 10)
        np.testing.assert_allclose(written, expected.raw, atol=1e-6)
        got_class = np.frombuffer(response.raw_output_contents[1], "<i8").reshape(16, 1)
        np.testing.assert_array_equal(got_class, expected.top_indices)
    finally:
        stub.SystemSharedMemoryUnregister(v2.SystemSharedMemoryUnregisterRequest(name="io"))
    assert not stub.SystemSharedMemoryStatus(v2.SystemSharedMemoryStatusRequest()).regions


def test_system_shared_memory_rejects(stub, digits_model: str, region) -> None:
    key = f"/{region.name}"

    def register(name="r", key=key, offset=0, byte_size=1024):
        request = v2.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=byte_size
        )
        return lambda: stub.SystemSharedMemoryRegister(request)

    def infer(in_size=256, in_offset=0, region_name="r", out_size=None):
        request = _raw_request(digits_model, X_TEST[:1])
        request.ClearField("raw_input_contents")
        _shm(request.inputs[0].parameters, region_name, in_size, in_offset)
        if out_size is not None:
            _shm(request.outputs.add(name="output").parameters, "r", out_size, 512)
        return lambda: stub.ModelInfer(request)

    register()()
    try:
        for call, code, fragment in [
            (register(), grpc.StatusCode.ALREADY_EXISTS, "name='r'"),
            (register(name="x", key="/no-such-object"), INVALID, "key='/no-such-object'"),
            (register(name="x", key="/../etc/passwd"), INVALID, "key='/../etc/passwd'"),
            (register(name="x", key=""), INVALID, "key=''"),
            (register(name="x", byte_size=1 << 20), INVALID, "past the end"),
            (register(name="x", offset=1 << 16, byte_size=1), INVALID, "past the end"),
            (register(name="x", byte_size=0), INVALID, "byte_size=0"),
            (register(name="a/b"), INVALID, "name='a/b'"),
            (infer(region_name="nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
            (infer(in_offset=1000), INVALID, "shared_memory_byte_size=256"),
            (infer(in_size=128), INVALID, "128 bytes"),
            (infer(out_size=8), INVALID, "needs 40 bytes"),
            (
                lambda: stub.SystemSharedMemoryUnregister(
                    v2.SystemSharedMemoryUnregisterRequest(name="nope")
                ),
                grpc.StatusCode.NOT_FOUND,
                "name='nope'",
            ),
            (
                lambda: stub.SystemSharedMemoryStatus(
                    v2.SystemSharedMemoryStatusRequest(name="nope")
                ),
                grpc.StatusCode.NOT_FOUND,
                "name='nope'",
            ),
        ]:
            assert_rejected(call, code, fragment)
    finally:
        stub.SystemSharedMemoryUnregister(v2.SystemSharedMemoryUnregisterRequest(name="r"))
    assert stub.ServerLive(v2.ServerLiveRequest()).live


def test_a_region_unregistered_while_in_use_stays_mapped_for_its_request(region) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", f"/{region.name}", 0, 1024)
    in_use = registry.view(Window("r", 8, 16, "inputs[0].parameters"))
    registry.unregister("r")
    region.buf[8:12] = b"abcd"  # the request's view still shares the client's memory
    assert bytes(in_use[:4]) == b"abcd"
    with pytest.raises(NotFound, match="shared_memory_region='r'"):
        registry.view(Window("r", 0, 16, "inputs[0].parameters"))
    registry.register("r", f"/{region.name}", 0, 1024)  # the name is free again
    registry.unregister()
    assert registry.status() == []


def test_a_stream_answers_each_request_while_the_client_waits(stub, digits_model: str) -> None:
    """A client that sends one request and waits for its answer before the next."""
    outbox: queue.Queue = queue.Queue()
    requests = iter(outbox.get, None)
    answers = stub.ModelStreamInfer(requests, timeout=30)
    for rows in (1, 2, 3):
        outbox.put(_raw_request(digits_model, X_TEST[:rows]))
        answer = next(answers)
        assert _outputs(answer.infer_response)["output"].shape == (rows, 10)
    outbox.put(None)
    assert list(answers) == []


def test_parameters_of_missing_extensions_are_refused_not_ignored(stub, digits_model) -> None:
    def with_parameter(where: str, name: str, value: v2.InferParameter):
        request = _raw_request(digits_model, X_TEST[:1], outputs=["output"])
        target = {"request": request, "input": request.inputs[0], "output": request.outputs[0]}
        target[where].parameters[name].CopyFrom(value)
        return lambda: stub.ModelInfer(request)

    one = v2.InferParameter(int64_param=1)
    for where, name, value, fragment in [
        ("request", "priority", one, "parameters.priority=1: torchwire has one queue"),
        ("request", "sequence_id", one, "parameters.sequence_id=1"),
        ("request", "timeout", v2.InferParameter(string_param="1s"), "parameters.timeout='1s'"),
        ("output", "classification", one, "outputs[0].parameters.classification=1"),
        ("input", "tile", one, "inputs[0].parameters.tile=1: is not a parameter"),
    ]:
        assert_rejected(with_parameter(where, name, value), INVALID, fragment)
    # A timeout (in microseconds) is taken.
    answer = with_parameter("request", "timeout", v2.InferParameter(int64_param=30_000_000))()
    assert answer.outputs[0].name == "output"
    # A model has no dependents: unloading "with them" is unloading it.
    dependents = {"unload_dependents": v2.ModelRepositoryParameter(bool_param=False)}
    stub.RepositoryModelUnload(
        v2.RepositoryModelUnloadRequest(model_name=digits_model, parameters=dependents)
    )


def test_a_region_at_an_offset_reads_and_writes_its_own_bytes(region) -> None:
    registry = SharedMemoryRegistry()
    offset = 5000  # past the first page, not on a page boundary
    registry.register("r", f"/{region.name}", offset, 1000)
    region.buf[offset + 10 : offset + 14] = b"wxyz"
    window = registry.view(Window("r", 10, 4, "inputs[0].parameters"))
    assert bytes(window) == b"wxyz"
    window[:] = np.frombuffer(b"abcd", np.uint8)
    assert bytes(region.buf[offset + 10 : offset + 14]) == b"abcd"
    registry.unregister()


def test_edge_inputs_are_refused_by_field_never_internal(stub, digits_model: str, region) -> None:
    superscript = _raw_request(digits_model, X_TEST[:1], version="²")
    overflow = v2.ModelInferRequest(model_name=digits_model)
    overflow.inputs.add(name="input", datatype="FP32", shape=[2**32, 2**32])
    both = _raw_request(digits_model, X_TEST[:1])
    both.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    for request, fragment in [
        (superscript, "model_version='²'"),
        (overflow, "inputs[0].shape"),
        (both, "inputs[0].contents"),
    ]:
        assert_rejected(lambda r=request: stub.ModelInfer(r), INVALID, fragment)
    assert_rejected(
        lambda: stub.ModelMetadata(v2.ModelMetadataRequest(name=digits_model, version="²")),
        INVALID,
        "version='²'",
    )


def test_a_truncated_region_is_refused_not_a_crash(stub, digits_model: str, region) -> None:
    """Reading a mapping past the end of its object would kill the server (SIGBUS)."""
    path = Path("/dev/shm") / f"tw-shrink-{os.getpid()}"
    with open(path, "wb") as fh:
        fh.truncate(4096)
    try:
        register = v2.SystemSharedMemoryRegisterRequest(
            name="shrinks", key=f"/{path.name}", byte_size=4096
        )
        stub.SystemSharedMemoryRegister(register)
        os.truncate(path, 0)
        request = _raw_request(digits_model, X_TEST[:1])
        request.ClearField("raw_input_contents")
        _shm(request.inputs[0].parameters, "shrinks", 256)
        assert_rejected(
            lambda: stub.ModelInfer(request), grpc.StatusCode.FAILED_PRECONDITION, "shrank to 0"
        )
        assert stub.ServerLive(v2.ServerLiveRequest()).live
        stub.SystemSharedMemoryUnregister(v2.SystemSharedMemoryUnregisterRequest(name="shrinks"))
    finally:
        path.unlink()


def test_a_refused_output_window_counts_one_failure_and_no_success(
    stub, digits_model: str, region
) -> None:
    stub.SystemSharedMemoryRegister(
        v2.SystemSharedMemoryRegisterRequest(name="small", key=f"/{region.name}", byte_size=4096)
    )
    try:
        before = _stats(stub, digits_model)
        request = _raw_request(digits_model, X_TEST[:1])
        _shm(request.outputs.add(name="output").parameters, "small", 8)
        assert_rejected(lambda: stub.ModelInfer(request), INVALID, "needs 40 bytes")
        after = _stats(stub, digits_model)
        assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
        assert after.inference_stats.success.count == before.inference_stats.success.count
    finally:
        stub.SystemSharedMemoryUnregister(v2.SystemSharedMemoryUnregisterRequest(name="small"))


def test_model_ready_loads_nothing(stub, digits_model: str) -> None:
    stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name=digits_model))
    assert stub.ModelReady(v2.ModelReadyRequest(name=digits_model)).ready
    index = stub.RepositoryIndex(v2.RepositoryIndexRequest(ready=True)).models
    assert digits_model not in {m.name for m in index}
