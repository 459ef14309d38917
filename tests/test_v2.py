"""The Open Inference Protocol v2 (inference.GRPCInferenceService) on the torchwire port,
checked against torchwire's own Predict."""

import json
import os
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.conftest import assert_rejected
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.core.datasets import BUILTIN_DATASETS

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
        (lambda r: r.raw_input_contents.__setitem__(0, b"1234"), INVALID, "has 4 bytes"),
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


TRITON_PYTHON = os.environ.get("TORCHWIRE_TRITON_PYTHON", "")


@pytest.mark.skipif(
    not TRITON_PYTHON,
    reason="needs a Python with tritonclient[grpc]: `make wirecheck` makes one and runs this",
)
def test_tritons_own_client_calls_a_torchwire_model(
    client: Client, digits_model: str, tmp_path: Path
) -> None:
    batch = X_TEST[:5]
    np.save(tmp_path / "x.npy", batch)
    out = subprocess.run(
        [
            TRITON_PYTHON,
            str(Path(__file__).with_name("triton_check.py")),
            client.address,
            digits_model,
            str(tmp_path / "x.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got["live"]
    assert got["ready"]
    assert got["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    expected = client.predict(digits_model, batch, top_k=1)
    np.testing.assert_allclose(np.array(got["output"]), expected.raw, atol=1e-6)
    np.testing.assert_array_equal(np.array(got["class"]), expected.top_indices)


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
