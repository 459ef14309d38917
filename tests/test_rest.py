"""The Open Inference Protocol v2 over HTTP/JSON (`--http-address`), through real HTTP to a
real server, checked against torchwire.v1 Predict; and the curl examples of docs/v2.md, run
verbatim."""

import base64
import gzip
import io
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
import zlib
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import start_server
from torchwire.client import Client
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.server import TorchwireServer

X_TEST, _ = BUILTIN_DATASETS["digits"].load("test")
DOC = Path(__file__).resolve().parent.parent / "docs" / "v2.md"
CURL_BLOCKS = re.findall(r"```sh\n(.*?)```", DOC.read_text().split("## curl", 1)[1], re.S)


def call(
    base: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, or of a POST when there is a body (bytes or JSON)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers=headers or {}, method="GET" if body is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def ok(base: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    status, _, content = call(base, path, body, headers)
    assert status == 200, content
    return json.loads(content)


def refused(base: str, path: str, body: Any, status: int, *fragments: str) -> None:
    """The call fails with `status` and a v2 JSON error naming every fragment."""
    got, _, content = call(base, path, body)
    error = json.loads(content)["error"]
    assert got == status, error
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in {error!r}"


@pytest.fixture(scope="module")
def base(server: TorchwireServer) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def _json_infer(batch: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(batch.shape)}
    return {"inputs": [tensor | {"data": batch.ravel().tolist()}], **extra}


def test_health_metadata_and_config(base: str, digits_model: str) -> None:
    assert ok(base, "/v2/health/live") == {"live": True}
    assert ok(base, "/v2/health/ready") == {"ready": True}
    server = ok(base, "/v2")
    assert server["name"] == "torchwire"
    assert "binary_tensor_data" in server["extensions"]
    meta = ok(base, f"/v2/models/{digits_model}")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert ok(base, f"/v2/models/{digits_model}/versions/1/ready") == {"ready": True}
    status, _, _ = call(base, f"/v2/models/{digits_model}/versions/99/ready")
    assert status == 503
    config = ok(base, f"/v2/models/{digits_model}/config")
    assert config["max_batch_size"] == 64
    assert config["input"][0] == {
        "name": "input",
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NONE",
        "dims": [1, 8, 8],
    }


def test_json_and_binary_infer_match_predict(base: str, client: Client, digits_model) -> None:
    batch = X_TEST[:7]
    expected = client.predict(digits_model, batch, top_k=1)
    body = ok(base, f"/v2/models/{digits_model}/infer", _json_infer(batch, id="a1"))
    assert body["id"] == "a1"
    assert body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    got = np.array(outputs["output"]["data"], np.float32).reshape(outputs["output"]["shape"])
    np.testing.assert_allclose(got, expected.raw, atol=1e-6)
    assert outputs["class"]["datatype"] == "INT64"

    # The binary data extension: raw input after the JSON, outputs raw after the answer's.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(batch.shape),
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, content = call(
        base,
        f"/v2/models/{digits_model}/versions/1/infer",
        header + batch.astype("<f4").tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    length = int(headers["inference-header-content-length"])
    answer = json.loads(content[:length])
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 7 * 10 * 4}
    probabilities = np.frombuffer(content[length:], "<f4").reshape(7, 10)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)


def test_png_as_bytes_in_json_and_binary(
    base: str, client: Client, colour_model: str, data_root: Path, colours: dict[str, str]
) -> None:
    path = sorted((data_root / colours["test"]).glob("*.png"))[0]
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="PNG")
    png = buffer.getvalue()
    expected = client.predict(colour_model, images=[png]).raw
    as_json = {
        "inputs": [
            {
                "name": "input",
                "datatype": "BYTES",
                "shape": [1],
                "data": [{"b64": base64.b64encode(png).decode()}],
            }
        ],
        "outputs": [{"name": "output"}],
    }
    body = ok(base, f"/v2/models/{colour_model}/infer", as_json)
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]), expected.ravel(), atol=1e-5)
    element = len(png).to_bytes(4, "little") + png
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, content = call(
        base,
        f"/v2/models/{colour_model}/infer",
        header + element,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    length = int(headers["inference-header-content-length"])
    first = json.loads(content[:length])["outputs"][0]
    assert first["name"] == "output"
    raw = np.frombuffer(content[length : length + first["parameters"]["binary_data_size"]], "<f4")
    np.testing.assert_allclose(raw, expected.ravel(), atol=1e-5)


def test_statistics_repository_and_shared_memory(
    base: str, client: Client, digits_model: str
) -> None:
    stats = ok(base, f"/v2/models/{digits_model}/versions/1/stats")["model_stats"][0]
    ok(base, f"/v2/models/{digits_model}/infer", _json_infer(X_TEST[:3]))
    after = ok(base, f"/v2/models/{digits_model}/stats")["model_stats"][0]
    assert after["inference_count"] - stats["inference_count"] == 3
    assert (
        after["inference_stats"]["success"]["count"] > stats["inference_stats"]["success"]["count"]
    )
    assert {(s["name"], s["version"]) for s in ok(base, "/v2/models/stats")["model_stats"]} >= {
        (digits_model, "1")
    }
    ok(base, f"/v2/repository/models/{digits_model}/unload", {})
    index = {(m["name"], m["version"]): m["state"] for m in ok(base, "/v2/repository/index", {})}
    assert index[(digits_model, "1")] == "UNAVAILABLE"
    ok(base, f"/v2/repository/models/{digits_model}/load", {})
    assert {m["name"] for m in ok(base, "/v2/repository/index", {"ready": True})} >= {digits_model}

    batch = X_TEST[:4].astype("<f4")
    memory = shared_memory.SharedMemory(name=f"tw-rest-{os.getpid()}", create=True, size=4096)
    try:
        np.ndarray((4096,), np.uint8, memory.buf)[: batch.nbytes] = batch.view(np.uint8).ravel()
        region = {"key": f"/{memory.name}", "offset": 0, "byte_size": 4096}
        ok(base, "/v2/systemsharedmemory/region/rest-io/register", region)
        assert ok(base, "/v2/systemsharedmemory/region/rest-io/status") == [
            {"name": "rest-io"} | region
        ]
        shm = {"shared_memory_region": "rest-io", "shared_memory_byte_size": batch.nbytes}
        request = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [4, 1, 8, 8], "parameters": shm}
            ],
            "outputs": [
                {
                    "name": "output",
                    "parameters": shm
                    | {"shared_memory_offset": 2048, "shared_memory_byte_size": 160},
                }
            ],
        }
        answer = ok(base, f"/v2/models/{digits_model}/infer", request)
        assert answer["outputs"][0]["parameters"]["shared_memory_byte_size"] == 160
        written = np.frombuffer(bytes(memory.buf[2048 : 2048 + 160]), "<f4").reshape(4, 10)
        np.testing.assert_allclose(written, client.predict(digits_model, batch).raw, atol=1e-6)
        ok(base, "/v2/systemsharedmemory/region/rest-io/unregister", {})
        assert ok(base, "/v2/systemsharedmemory/status") == []
    finally:
        memory.close()
        memory.unlink()


def test_bad_requests_get_v2_errors_naming_the_field(
    base: str, digits_model: str, colour_model: str
) -> None:
    infer = f"/v2/models/{digits_model}/infer"
    images = f"/v2/models/{colour_model}/infer"
    good = _json_infer(X_TEST[:1])

    def changed(**tensor: Any) -> dict[str, Any]:
        return {"inputs": [good["inputs"][0] | tensor]}

    cases = [
        (infer, b"{not json", 400, "body=", "is not JSON"),
        (infer, {"inputs": {"name": "input"}}, 400, "inputs="),
        (infer, changed(shape=[1, "8"]), 400, "inputs[0].shape"),
        (infer, changed(datatype="STRING"), 400, "inputs[0].datatype='STRING'"),
        (infer, changed(datatype="FP64"), 400, "inputs[0].datatype='FP64'", "takes FP32"),
        (infer, changed(data=[1.0, 2.0]), 400, "inputs[0].data", "needs 64"),
        (infer, changed(data=["a"] * 64), 400, "inputs[0].data"),
        (infer, changed(name="pixels"), 400, "inputs[0].name='pixels'"),
        (infer, changed(shape=[1, 64]), 400, "inputs[0].shape=[1, 64]"),
        (infer, changed(parameters={"binary_data_size": 99}), 400, "binary_data_size=99"),
        (infer, changed(parameters={"shared_memory_region": "r"}), 400, "byte_size=None"),
        (
            infer,
            changed(parameters={"shared_memory_region": "nope", "shared_memory_byte_size": 256}),
            404,
            "shared_memory_region='nope'",
        ),
        (infer, good | {"outputs": [{"name": "logits"}]}, 400, "outputs[0].name='logits'"),
        ("/v2/models/nope/infer", good, 404, "'nope'"),
        (f"/v2/models/{digits_model}/versions/x/infer", good, 400, "model_version='x'"),
        (f"/v2/models/{digits_model}/versions/9/config", None, 404, "no version 9"),
        ("/v2/models/nope/stats", None, 404, "'nope'"),
        ("/v2/repository/models/nope/load", {}, 404, "'nope'"),
        (
            f"/v2/repository/models/{digits_model}/load",
            {"parameters": {"config": "{}"}},
            400,
            "parameters=['config']",
        ),
        ("/v2/systemsharedmemory/region/x/register", {"key": 7}, 400, "key=7"),
        (
            "/v2/systemsharedmemory/region/x/register",
            {"key": "/../etc/passwd", "byte_size": 1},
            400,
            "key='/../etc/passwd'",
        ),
        ("/v2/systemsharedmemory/region/x/register", {"key": "/k", "byte_size": -1}, 400, "-1"),
        ("/v2/systemsharedmemory/region/nope/unregister", {}, 404, "name='nope'"),
        ("/v2/systemsharedmemory/region/nope/status", None, 404, "name='nope'"),
    ]
    cases += [
        (infer, b"[" * 100000, 400, "body=", "nests too deeply"),
        (infer, changed(datatype="INT32", shape=[1], data=[99999999999999]), 400, "inputs[0].data"),
        (infer, changed(datatype="BYTES", shape=[1], data=["\ud800"]), 400, "inputs[0].data[0]"),
        (infer, changed(datatype="BYTES", shape=[1], data=[{"b64": "é"}]), 400, "not base64"),
        (images, changed(datatype="BYTES", shape=[0], data=[]), 400, "inputs[0]=", "one image"),
        (images, changed(datatype="BYTES", shape=[1], data=["x"]), 400, "inputs[0][0]="),
        (infer, good | {"outputs": None}, 400, "outputs=None"),
        (infer, b'{"inputs": [{"data": [NaN]}]}', 400, "NaN is not a JSON value"),
        (f"/v2/models/{digits_model}/versions/%C2%B2/infer", good, 400, "model_version='²'"),
        (f"/v2/models/{digits_model}/versions/%C2%B2", None, 400, "version='²'"),
        (f"/v2/repository/models/{digits_model}/load", {"parameters": [1]}, 400, "parameters=[1]"),
        (f"/v2/models/{digits_model}/nonsense", None, 404, "no such endpoint"),
        ("/v2/health/live", {}, 405, "POST is not allowed"),
    ]
    for path, body, status, *fragments in cases:
        refused(base, path, body, status, *fragments)
    body = json.dumps(good).encode()
    for packed, why in (
        (gzip.compress(body) + b"junk", "has bytes after its end"),
        (gzip.compress(body)[:-12], "is cut short"),
    ):
        status, _, content = call(base, infer, packed, {"Content-Encoding": "gzip"})
        assert status == 400
        assert why in json.loads(content)["error"]
    status, _, content = call(
        base, infer, json.dumps(good).encode(), {"Inference-Header-Content-Length": "x"}
    )
    assert status == 400
    assert "Inference-Header-Content-Length='x'" in json.loads(content)["error"]
    # Compressed bodies are taken (gzip, deflate), within the message limit once inflated.
    body = json.dumps(good).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        answer = ok(base, infer, packed, {"Content-Encoding": encoding})
        assert answer["model_name"] == digits_model
    status, _, content = call(base, infer, body, {"Content-Encoding": "br"})
    assert status == 400
    assert "Content-Encoding='br'" in json.loads(content)["error"]
    status, _, content = call(base, infer, b"not gzip", {"Content-Encoding": "gzip"})
    assert status == 400
    bomb = gzip.compress(b"0" * (100 << 20))  # 100 MiB of zeros in 100 KiB
    status, _, content = call(base, infer, bomb, {"Content-Encoding": "gzip"})
    assert status == 429
    assert "decompresses to over" in json.loads(content)["error"]
    refused(base, infer, good | {"parameters": {"priority": 2}}, 400, "parameters.priority=2")
    ok(
        base,
        f"/v2/repository/models/{digits_model}/unload",
        {"parameters": {"unload_dependents": False}},
    )
    status, _, _ = call(base, "/v2/no/such/route")
    assert status == 404
    assert ok(base, "/v2/health/live") == {"live": True}


def test_tokens_body_limit_and_metrics(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        http_address="127.0.0.1:0",
        auth_tokens="s3cret",
        max_message_bytes=4096,
        metrics_address="127.0.0.1:0",
    )
    base = f"http://127.0.0.1:{server.http_port}"
    try:
        assert ok(base, "/v2/health/ready") == {"ready": True}  # open to probes
        refused(base, "/v2", None, 401, "bearer token")
        refused(base, "/v2/models/m/infer", {}, 401, "bearer token")
        token = {"Authorization": "Bearer s3cret"}
        assert ok(base, "/v2", headers=token)["name"] == "torchwire"
        status, _, content = call(base, "/v2/models/m/infer", b"x" * 5000, token)
        assert status == 429
        assert "max_message_bytes=4096" in json.loads(content)["error"]
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
            metrics = r.read().decode()
        assert 'torchwire_http_requests_total{code="401",route="/v2"} 1.0' in metrics
    finally:
        server.stop(grace=1)


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=lambda b: b.splitlines()[-1][:40])
def test_curl_examples_run(base: str, digits_model: str, block: str) -> None:
    expected = re.search(r"# expect: (.*)", block).group(1)
    script = block.replace("http://127.0.0.1:8000", base)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
