"""Export and fast inference through a real channel: three runtimes, parity, downloads that run
without torchwire, dynamic batching, streaming, the runtime cache."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from tests.conftest import assert_rejected, assert_status, start_server
from torchwire.client import Client
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.core.runtimes import onnx_session
from torchwire.service.errors import FailedPrecondition
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

X_TEST, Y_TEST = BUILTIN_DATASETS["digits"].load("test")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def exported(client: Client, digits_model: str, cnn_model: str) -> list[str]:
    """Both digits models exported to both formats."""
    for model in (digits_model, cnn_model):
        for fmt in ("torchscript", "onnx"):
            artifact = client.export(model, fmt)
            assert artifact.max_abs_diff <= 1e-4
            assert list(artifact.parity_batch_sizes) == [1, 7]
    return [digits_model, cnn_model]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_three_runtimes_agree(client: Client, exported: list[str], batch: int) -> None:
    for model in exported:
        results = {
            rt: client.predict(model, X_TEST[:batch], runtime=rt, outputs=["raw"])
            for rt in ("eager", "torchscript", "onnxruntime")
        }
        for runtime, result in results.items():
            assert result.runtime == runtime
            assert result.raw.shape == (batch, 10)
            np.testing.assert_allclose(result.raw, results["eager"].raw, atol=1e-4, rtol=1e-4)
        # With exports present, the server picks ONNX Runtime by itself.
        assert client.predict(model, X_TEST[:batch]).runtime == "onnxruntime"


def test_onnx_download_runs_without_torchwire(
    client: Client, exported: list[str], tmp_path: Path
) -> None:
    model = exported[1]
    path = tmp_path / "model.onnx"
    artifact = client.export(model, "onnx", path)
    assert path.stat().st_size == artifact.size_bytes
    assert not list(tmp_path.glob(".*part"))
    np.save(tmp_path / "x.npy", X_TEST[:9])
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "out = s.run(None, {'input': np.load(sys.argv[2])})[0]\n"
        "assert not any(m.startswith('torchwire') for m in sys.modules)\n"
        "np.save(sys.argv[3], out)\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npy"),
        ],
        check=True,
        timeout=120,
    )
    served = client.predict(model, X_TEST[:9], outputs=["raw"], runtime="onnxruntime").raw
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), served, atol=1e-5)


def test_torchscript_download_runs_without_torchwire(
    client: Client, exported: list[str], tmp_path: Path
) -> None:
    model = exported[0]
    path = tmp_path / "model.pt"
    client.export(model, "torchscript", path)
    script = (
        "import sys, warnings, torch\n"
        "warnings.simplefilter('ignore')\n"
        "m = torch.jit.load(sys.argv[1])\n"
        "x = torch.zeros(3, 1, 8, 8)\n"
        "print(m(x).tolist())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    served = client.predict(
        model, np.zeros((3, 1, 8, 8), np.float32), outputs=["raw"], runtime="eager"
    ).raw
    np.testing.assert_allclose(np.array(json.loads(result.stdout)), served, atol=1e-5)


def test_get_model_lists_artifacts(client: Client, exported: list[str]) -> None:
    version = client.model(exported[0]).versions[-1]
    formats = {a.format: a for a in version.artifacts}
    assert set(formats) == {pb.EXPORT_FORMAT_ONNX, pb.EXPORT_FORMAT_TORCHSCRIPT}
    onnx = formats[pb.EXPORT_FORMAT_ONNX]
    assert onnx.file_name == "model.onnx"
    assert onnx.opset == 18
    assert len(onnx.sha256) == 64


def test_failed_parity_keeps_the_previous_export(client: Client, exported: list[str]) -> None:
    model = exported[1]
    before = {a.format: a.sha256 for a in client.model(model).versions[-1].artifacts}
    request = pb.ExportRequest(model_name=model, format=pb.EXPORT_FORMAT_ONNX, tolerance=1e-30)
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Export(request)
    assert_status(
        info.value, grpc.StatusCode.FAILED_PRECONDITION, "parity check failed", "tolerance 1e-30"
    )
    after = {a.format: a.sha256 for a in client.model(model).versions[-1].artifacts}
    assert after == before
    assert client.predict(model, X_TEST[:4], runtime="onnxruntime").raw is not None


def test_concurrent_requests_are_merged(client: Client, exported: list[str]) -> None:
    model = exported[0]
    client.configure_batching(model, max_batch_size=64, max_delay_ms=50)
    try:
        results: list = [None] * 32
        barrier = threading.Barrier(32)

        def call(i: int) -> None:
            barrier.wait()
            results[i] = client.predict(model, X_TEST[i : i + 1], outputs=["raw"])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert max(r.batch_sizes[0] for r in results) > 1
        merged = np.concatenate([r.raw for r in results])
        alone = client.predict(model, X_TEST[:32], outputs=["raw"], runtime="onnxruntime").raw
        np.testing.assert_allclose(merged, alone, atol=1e-5)
    finally:
        client.configure_batching(model, reset=True)


def test_only_models_slower_than_the_trip_run_in_the_server_for_frontends(
    server, exported: list[str]
) -> None:
    """A loaded runtime records its one-row run; with frontends, a batched model on the CPU
    runs in the server only from `--shared-run-ms` on (the digits MLP takes microseconds)."""
    models = server.models
    served = models.served(exported[0], 0, "onnxruntime")
    assert 0 < served.one_row_seconds < 0.5
    on_cpu = models.device.type == "cpu"
    assert models.runs_for_frontends(served) is not on_cpu  # on a GPU, always
    default = models.shared_run_s
    try:
        models.shared_run_s = 0.0
        assert models.runs_for_frontends(served)
    finally:
        models.shared_run_s = default


def test_large_requests_are_split_and_batching_can_be_off(
    client: Client, exported: list[str]
) -> None:
    model = exported[0]
    config = client.configure_batching(model, max_batch_size=16)
    assert not config.server_default
    assert client.model(model).batching.max_batch_size == 16
    try:
        result = client.predict(model, X_TEST[:50], outputs=["raw"])
        assert result.batch_sizes == [16, 16, 16, 2]
        client.configure_batching(model, enabled=False)
        unbatched = client.predict(model, X_TEST[:50], outputs=["raw"])
        assert unbatched.batch_sizes == [50]
        np.testing.assert_allclose(result.raw, unbatched.raw, atol=1e-5)
    finally:
        assert client.configure_batching(model, reset=True).server_default


def test_a_stream_of_10000_samples_comes_back_complete_and_in_order(
    client: Client, exported: list[str]
) -> None:
    model = exported[0]
    rng = np.random.default_rng(0)
    samples = rng.random((10_000, 1, 8, 8), dtype=np.float32)

    def batches():
        for start in range(0, len(samples), 250):
            yield samples[start : start + 250]

    results = list(client.predict_many(model, batches(), outputs=["raw", "top_k"]))
    assert len(results) == 40
    streamed = np.concatenate([r.raw for r in results])
    assert streamed.shape == (10_000, 10)
    direct = np.concatenate(
        [
            client.predict(model, samples[i : i + 2000], outputs=["raw"]).raw
            for i in range(0, 10_000, 2000)
        ]
    )
    np.testing.assert_allclose(streamed, direct, atol=1e-5)
    top = np.concatenate([r.top_indices[:, 0] for r in results])
    np.testing.assert_array_equal(top, direct.argmax(axis=1))


def test_predict_with_and_without_a_deadline(client: Client, digits_model: str) -> None:
    request = pb.PredictRequest(model_name=digits_model, inputs=tensors.encode(X_TEST[:3]))
    assert len(client.stub.Predict(request).top_k) == 3  # no deadline at all
    assert len(client.stub.Predict(request, timeout=30).top_k) == 3


def test_export_rejects(client: Client, digits_model: str) -> None:
    def export(**fields):
        return client.stub.Export(
            pb.ExportRequest(
                **{"model_name": digits_model, "format": pb.EXPORT_FORMAT_ONNX, **fields}
            )
        )

    cases = [
        ({"model_name": "nope"}, grpc.StatusCode.NOT_FOUND, "'nope'"),
        ({"version": 99}, grpc.StatusCode.NOT_FOUND, "no version 99"),
        ({"format": 0}, INVALID, "format=0"),
        ({"format": 9}, INVALID, "format=9"),
        ({"opset": 5}, INVALID, "opset=5"),
        ({"tolerance": -1.0}, INVALID, "tolerance=-1.0"),
        ({"model_name": "../x"}, INVALID, "model_name='../x'"),
    ]
    for fields, code, fragment in cases:
        assert_rejected(lambda f=fields: export(**f), code, fragment)


def test_runtime_and_download_reject(client: Client, regression_data: str) -> None:
    client.train("never-exported", regression_data, loss="mse", epochs=1).wait()
    x = tensors.encode(np.zeros((2, 6), np.float32))
    cases = [
        (
            lambda: client.stub.Predict(
                pb.PredictRequest(model_name="never-exported", inputs=x, runtime="tensorrt")
            ),
            INVALID,
            "runtime='tensorrt'",
        ),
        (
            lambda: client.stub.Predict(
                pb.PredictRequest(model_name="never-exported", inputs=x, runtime="onnxruntime")
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "runtime='onnxruntime'",
        ),
        (
            lambda: list(
                client.stub.DownloadArtifact(
                    pb.DownloadArtifactRequest(
                        model_name="never-exported", format=pb.EXPORT_FORMAT_ONNX
                    )
                )
            ),
            grpc.StatusCode.NOT_FOUND,
            "no onnx export",
        ),
        (
            lambda: list(
                client.stub.DownloadArtifact(
                    pb.DownloadArtifactRequest(model_name="never-exported")
                )
            ),
            INVALID,
            "format=0",
        ),
        (
            lambda: list(
                client.stub.DownloadArtifact(
                    pb.DownloadArtifactRequest(
                        model_name="never-exported", format=pb.EXPORT_FORMAT_ONNX, chunk_bytes=-1
                    )
                )
            ),
            INVALID,
            "chunk_bytes=-1",
        ),
        (
            lambda: client.stub.ConfigureBatching(pb.ConfigureBatchingRequest(model_name="nope")),
            grpc.StatusCode.NOT_FOUND,
            "'nope'",
        ),
        (
            lambda: client.stub.ConfigureBatching(
                pb.ConfigureBatchingRequest(
                    model_name="never-exported", batching=pb.BatchingConfig(max_batch_size=0)
                )
            ),
            INVALID,
            "batching.max_batch_size=0",
        ),
        (
            lambda: client.stub.ConfigureBatching(
                pb.ConfigureBatchingRequest(
                    model_name="never-exported",
                    batching=pb.BatchingConfig(max_batch_size=8, max_delay_ms=5000),
                )
            ),
            INVALID,
            "batching.max_delay_ms=5000",
        ),
    ]
    for call, code, fragment in cases:
        assert_rejected(call, code, fragment)
    assert client.predict("never-exported", np.zeros((2, 6), np.float32)).runtime == "eager"


def test_a_bad_request_in_a_stream_is_named(client: Client, digits_model: str) -> None:
    batches = [X_TEST[:4], np.zeros((4, 64), np.float32), X_TEST[:4]]
    with pytest.raises(grpc.RpcError) as info:
        list(client.predict_many(digits_model, iter(batches)))
    assert_status(info.value, INVALID, "request[1]: inputs.shape=[4, 64]")
    assert client.predict(digits_model, X_TEST[:4]).raw.shape == (4, 10)


def test_the_cache_stays_under_its_memory_bound(tmp_path: Path) -> None:
    server = start_server(tmp_path, max_loaded_bytes=100_000)  # one MLP: 68,904 bytes
    try:
        with Client(server.address) as client:
            for name in ("first", "second"):
                client.train(name, "digits", epochs=2, val_fraction=0).wait()
            for name in ("first", "second", "first"):
                result = client.predict(name, X_TEST[:64], outputs=["top_k"])
                assert (result.top_indices[:, 0] == Y_TEST[:64]).mean() > 0.5
                # Only the newest fits.
                assert server.models.cache.loaded() == [(name, 1, "eager")]
    finally:
        server.stop(grace=1)


def test_cli_export(client: Client, digits_model: str, tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    torchwire = str(Path(sys.executable).with_name("torchwire"))
    result = subprocess.run(
        [
            torchwire,
            "export",
            digits_model,
            "--format",
            "onnx",
            "--out",
            str(out),
            "--server",
            client.address,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    )
    assert "sha256" in result.stdout
    session = onnx_session(out, torch.device("cpu"))
    assert session.run(None, {"input": X_TEST[:2]})[0].shape == (2, 10)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA"
)
def test_onnxruntime_falling_back_from_cuda_fails_loudly(exported: list[str], server) -> None:
    record = server.store.versions.get(exported[0], 0)
    _, path = server.store.versions.artifact(record, "onnx")
    with pytest.raises(FailedPrecondition, match="fell back"):
        onnx_session(path, torch.device("cuda", 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_runtimes(client: Client, exported: list[str]) -> None:
    model = exported[1]
    onnx = client.predict(model, X_TEST[:64], runtime="onnxruntime", outputs=["raw"])
    assert onnx.device == "CUDAExecutionProvider"
    eager = client.predict(model, X_TEST[:64], runtime="eager", outputs=["raw"])
    assert eager.device.startswith("cuda")
    np.testing.assert_allclose(onnx.raw, eager.raw, atol=1e-3)
