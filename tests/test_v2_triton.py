"""Triton's own client (tritonclient, gRPC and HTTP) against torchwire's Open Inference
Protocol v2: tests/triton_check.py runs in a Python of its own that has tritonclient and not
torchwire, and what it got is compared with torchwire's Predict.

Skipped unless TORCHWIRE_TRITON_PYTHON names that Python (`make wirecheck` makes one).
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torchwire.client import Client, PredictResult
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.server import TorchwireServer

TRITON_PYTHON = os.environ.get("TORCHWIRE_TRITON_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not TRITON_PYTHON,
    reason="needs a Python with tritonclient[grpc,http]: `make wirecheck` makes one and runs this",
)

X_TEST, _ = BUILTIN_DATASETS["digits"].load("test")
BATCH = X_TEST[:5]
PROTOCOLS = ("grpc", "http")
WRONG_NAME = "inputs[0].name='wrong'"
"""What the error of a request whose input is named "wrong" names: the v2 field and value."""


def ints(values: list[Any]) -> list[int]:
    """A shape or dims list as ints (gRPC's JSON writes int64 values as strings)."""
    return [int(v) for v in values]


@pytest.fixture(scope="module")
def png(data_root: Path, colours: dict[str, str]) -> Path:
    """One of the colour model's test images."""
    return sorted((data_root / colours["test"]).glob("*.png"))[0]


@pytest.fixture(scope="module")
def triton(
    server: TorchwireServer,
    digits_model: str,
    colour_model: str,
    png: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """What triton_check.py got, for both protocols (run once for the module)."""
    inputs = tmp_path_factory.mktemp("triton") / "x.npy"
    np.save(inputs, BATCH)
    out = subprocess.run(
        [
            TRITON_PYTHON,
            str(Path(__file__).with_name("triton_check.py")),
            server.address,
            f"127.0.0.1:{server.http_port}",
            digits_model,
            colour_model,
            str(inputs),
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def expected(client: Client, digits_model: str) -> PredictResult:
    """torchwire's own Predict of the batch."""
    return client.predict(digits_model, BATCH, top_k=1)


def assert_outputs(got: dict[str, Any], expected: PredictResult, atol: float) -> None:
    """The outputs "output", "probabilities" and "class" are Predict's raw, probabilities and
    top_indices."""
    np.testing.assert_allclose(np.array(got["output"]["data"]), expected.raw, atol=atol)
    np.testing.assert_allclose(
        np.array(got["probabilities"]["data"]), expected.probabilities, atol=atol
    )
    np.testing.assert_array_equal(np.array(got["class"]["data"]), expected.top_indices)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_and_metadata(triton: dict[str, Any], protocol: str) -> None:
    got = triton[protocol]
    assert [got["live"], got["server_ready"], got["ready"]] == [True, True, True]
    assert {"binary_tensor_data", "system_shared_memory", "statistics"} <= set(
        got["server"]["extensions"]
    )
    inputs = [t | {"shape": ints(t["shape"])} for t in got["metadata"]["inputs"]]
    assert inputs == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    outputs = {t["name"]: (t["datatype"], ints(t["shape"])) for t in got["metadata"]["outputs"]}
    assert outputs == {
        "output": ("FP32", [-1, 10]),
        "probabilities": ("FP32", [-1, 10]),
        "class": ("INT64", [-1, 1]),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_matches_predict(
    triton: dict[str, Any], protocol: str, expected: PredictResult
) -> None:
    got = triton[protocol]["infer"]
    assert_outputs(got, expected, atol=1e-6)
    assert {name: (o["datatype"], o["shape"]) for name, o in got.items()} == {
        "output": ("FP32", [5, 10]),
        "probabilities": ("FP32", [5, 10]),
        "class": ("INT64", [5, 1]),
    }
    assert triton[protocol]["infer_id"] == "digits-1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_png_as_bytes_input_matches_predict(
    triton: dict[str, Any], protocol: str, client: Client, colour_model: str, png: Path
) -> None:
    expected = client.predict(colour_model, images=[png.read_bytes()], top_k=1)
    got = triton[protocol]["image"]
    np.testing.assert_allclose(np.array(got["output"]["data"]), expected.raw, atol=1e-4)
    np.testing.assert_array_equal(np.array(got["class"]["data"]), expected.top_indices)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_input_name_names_the_field(triton: dict[str, Any], protocol: str) -> None:
    assert WRONG_NAME in triton[protocol]["bad_input"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_in_and_out(
    triton: dict[str, Any], protocol: str, expected: PredictResult
) -> None:
    got = triton[protocol]["shm"]
    sizes = {r["name"].rpartition("-")[2]: int(r["byte_size"]) for r in got["registered"]}
    # The output region holds the three outputs one after the other: 5 x 10 FP32 twice, 5 INT64.
    assert sizes == {"in": BATCH.nbytes, "out": 5 * (10 + 10) * 4 + 5 * 8}
    assert_outputs(got["outputs"], expected, atol=1e-6)
    offsets = {}
    for name, output in got["outputs"].items():
        # gRPC's parameters are InferParameter messages, HTTP's plain JSON values.
        parameters = {
            key: next(iter(value.values())) if isinstance(value, dict) else value
            for key, value in output["parameters"].items()
        }
        assert parameters["shared_memory_region"].endswith("-out")
        offsets[name] = int(parameters.get("shared_memory_offset", 0))
    assert offsets == {"output": 0, "probabilities": 200, "class": 400}
    assert got["after_unregister"] == []


def test_stream_answers_in_order_with_errors_in_place(
    triton: dict[str, Any], expected: PredictResult
) -> None:
    got = triton["stream"]
    answers = got["answers"]
    assert [a.get("id") for a in answers] == [
        s["id"] if s["input"] == "input" else None for s in got["sent"]
    ]
    assert WRONG_NAME in answers[2]["error"]
    for sent, answer in zip(got["sent"], answers, strict=True):
        if "error" in answer:
            continue
        row = sent["row"]
        # Each row went alone, or batched with others: 1e-5 leaves room for the batch size.
        np.testing.assert_allclose(answer["output"]["data"], expected.raw[row : row + 1], atol=1e-5)
        assert answer["class"]["data"] == expected.top_indices[row : row + 1].tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_config(triton: dict[str, Any], protocol: str, digits_model: str) -> None:
    config = triton[protocol]["config"]
    assert config["name"] == digits_model
    assert int(config["max_batch_size"]) > 0
    assert [(i["name"], i["data_type"], ints(i["dims"])) for i in config["input"]] == [
        ("input", "TYPE_FP32", [1, 8, 8])
    ]
    assert [(o["name"], o["data_type"], ints(o["dims"])) for o in config["output"]] == [
        ("output", "TYPE_FP32", [10]),
        ("probabilities", "TYPE_FP32", [10]),
        ("class", "TYPE_INT64", [1]),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_statistics_count_the_inferences(
    triton: dict[str, Any], protocol: str, digits_model: str
) -> None:
    (stats,) = triton[protocol]["statistics"]["model_stats"]
    assert stats["name"] == digits_model
    assert int(stats["inference_count"]) > 0
    assert int(stats["execution_count"]) > 0
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) > 0
    assert int(inference["success"]["ns"]) > 0
    assert int(inference["fail"]["count"]) > 0  # the wrong input name


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_repository_index_lists_the_model(
    triton: dict[str, Any], protocol: str, digits_model: str
) -> None:
    entries = {e["name"]: e for e in triton[protocol]["index"]}
    assert entries[digits_model]["state"] == "READY"
    assert entries[digits_model]["version"] == "1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_outputs_in_and_out_of_shared_memory_in_one_request(
    triton: dict[str, Any], protocol: str, expected: PredictResult
) -> None:
    got = triton[protocol]["shm_mixed"]
    np.testing.assert_allclose(np.array(got["output"]), expected.raw, atol=1e-6)
    assert got["class_error"] is None
    assert got["class"] == expected.top_indices.tolist()


def test_stream_answers_while_the_client_waits(triton: dict[str, Any]) -> None:
    assert triton["stream"]["first_answered_while_open"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_compression_priority_and_unload(
    triton: dict[str, Any], protocol: str, expected: PredictResult
) -> None:
    got = triton[protocol]
    assert_outputs(got["compressed"], expected, atol=1e-6)
    assert "parameters.priority=1: torchwire has one queue" in got["priority"]
    assert got["ready_after_unload"] is False
