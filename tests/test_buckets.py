"""Fixed-shape execution: runs padded to bucket sizes give the unpadded outputs, and the
buckets show in GetModel. CUDA-only checks are guarded; the rest runs on the CPU too."""

import copy
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import assert_rejected
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.config import ServerConfig
from torchwire.service.core.architectures import CNNParams, ModelConfig
from torchwire.service.core.buckets import BucketedRuntime, powers_of_two
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.core.export import export_model
from torchwire.service.core.runtimes import (
    OnnxRuntime,
    RuntimeOptions,
    TorchRuntime,
    apply_tf32,
    onnx_session,
)
from torchwire.v1 import torchwire_pb2 as pb

CPU = torch.device("cpu")
SIZES = (1, 2, 4, 8, 16)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A CNN with BatchNorm whose running statistics are not the identity, and its ONNX."""
    torch.manual_seed(0)
    config = ModelConfig("cnn", CNNParams((4, 8)), (1, 8, 8), 10)
    module = config.build().eval()
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    export_model(module, config, "onnx", path)
    return module, path


def _batches() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((n, 1, 8, 8)).astype(np.float32) for n in range(1, 38)]


def test_powers_of_two_end_at_the_largest() -> None:
    assert powers_of_two(64) == (1, 2, 4, 8, 16, 32, 64)
    assert powers_of_two(48) == (1, 2, 4, 8, 16, 32, 48)
    assert powers_of_two(1) == (1,)


def test_padded_onnx_runs_are_bit_for_bit_the_unpadded_ones(cnn) -> None:
    _, path = cnn
    plain = OnnxRuntime(path, CPU)
    sample = np.zeros((1, 1, 8, 8), np.float32)
    bucketed = BucketedRuntime(OnnxRuntime(path, CPU), SIZES, sample)
    assert [b.batch_size for b in bucketed.buckets] == list(SIZES)
    assert all(b.warmup_seconds > 0 for b in bucketed.buckets)
    for batch in _batches():  # 1..37 rows: every bucket, and splits beyond the largest
        np.testing.assert_array_equal(bucketed.run(batch), plain.run(batch))


def test_padded_eager_runs_match_and_padding_leaves_no_trace(cnn) -> None:
    module, _ = cnn
    plain = TorchRuntime("eager", module, CPU)
    bucketed = BucketedRuntime(
        TorchRuntime("eager", module, CPU), SIZES, np.zeros((1, 1, 8, 8), np.float32)
    )
    batches = _batches()
    for batch in batches:
        # Another batch size may pick another kernel blocking: float32 sums reassociated.
        np.testing.assert_allclose(bucketed.run(batch), plain.run(batch), rtol=0, atol=1e-6)
    # Rows a run leaves in a bucket are zeroed before a smaller run: no request's data stays
    # behind in the padding of another's.
    bucketed.run(batches[6])  # 7 rows in the bucket of 8
    bucketed.run(batches[4])  # 5 rows
    (eight,) = [b for b in bucketed._buckets if b.size == 8]
    assert not eight.executor.inputs[5:].any()
    np.testing.assert_array_equal(eight.executor.inputs[:5], batches[4])


def test_half_precision_stays_near_float32(cnn) -> None:
    """fp16 and bf16 weights and math (outputs float32), here on the CPU: the differences
    docs/inference.md records for this model."""
    module, _ = cnn
    batch = _batches()[-1]  # 37 rows
    expected = TorchRuntime("eager", module, CPU).run(batch)
    for precision, bound in (("fp16", 2e-3), ("bf16", 1e-2)):
        options = RuntimeOptions(precision=precision)
        runtime = TorchRuntime("eager", copy.deepcopy(module), CPU, options)
        outputs = BucketedRuntime(runtime, SIZES, np.zeros((1, 1, 8, 8), np.float32)).run(batch)
        assert outputs.dtype == np.float32
        difference = np.abs(outputs - expected).max()
        assert 0 < difference < bound, (precision, difference)


def test_sessions_sharing_weights_give_the_same_outputs(cnn) -> None:
    """The CUDA path's weight sharing (`add_initializer`), exercised with CPU OrtValues."""
    _, path = cnn
    runtime = OnnxRuntime(path, CPU)
    shared = onnx_session(
        path, CPU, batch_size=("batch", 8), initializers=runtime._shared_weights()
    )
    batch = _batches()[7]
    np.testing.assert_array_equal(shared.run(None, {"input": batch})[0], runtime.run(batch))


def test_configured_buckets_serve_the_same_predictions_and_show_in_get_model(
    client: Client, capsys: pytest.CaptureFixture
) -> None:
    from torchwire.client.cli import main

    def batching(*flags: str) -> str:
        assert main(["batching", "bucketed", *flags, "--server", client.address]) == 0
        return capsys.readouterr().out

    client.train("bucketed", "digits", architecture="cnn", channels=[4], epochs=1, seed=0).wait()
    client.export("bucketed", "onnx")
    x, _ = BUILTIN_DATASETS["digits"].load("test")
    batch = x[:45]  # one run of 45; buckets of 16 at most: 16, 16, then 13 padded to 16
    before = {r: client.predict("bucketed", batch, runtime=r).raw for r in ("onnxruntime", "eager")}
    assert "bucket_sizes 1,4,16 (the model's) (model setting)" in batching(
        "--bucket-sizes", "1,4,16"
    )

    # On the CPU the model ran unpadded before: ONNX Runtime's outputs are the same bits. On
    # CUDA it ran in the server's buckets (one of 64): other shapes, other kernels.
    exact = 0 if not torch.cuda.is_available() else 1e-5
    after = client.predict("bucketed", batch, runtime="onnxruntime")
    np.testing.assert_allclose(after.raw, before["onnxruntime"], rtol=0, atol=exact)
    assert after.batch_sizes == [45]  # what batching merged; the buckets split it further
    eager = client.predict("bucketed", batch, runtime="eager").raw
    np.testing.assert_allclose(eager, before["eager"], rtol=0, atol=1e-5)

    model = client.model("bucketed")
    assert list(model.batching.bucket_sizes) == [1, 4, 16]
    assert model.batching.own_bucket_sizes
    loaded = {r.runtime: r for r in model.versions[-1].loaded}
    assert set(loaded) == {"onnxruntime", "eager"}
    for runtime in loaded.values():
        assert [b.batch_size for b in runtime.buckets] == [1, 4, 16]
        assert all(b.warmup_seconds > 0 for b in runtime.buckets)
        assert runtime.load_seconds >= sum(b.warmup_seconds for b in runtime.buckets)
    (onnx,) = [a for a in model.versions[-1].artifacts if a.format == pb.EXPORT_FORMAT_ONNX]
    if not torch.cuda.is_available():
        # On the CPU every bucket session holds its own weights: the cache counts them.
        assert loaded["onnxruntime"].size_bytes == 4 * onnx.size_bytes
        assert loaded["onnxruntime"].placement == "CPUExecutionProvider"
        assert loaded["onnxruntime"].bucket_device_bytes == 0
    v2_stub = v2_grpc.GRPCInferenceServiceStub(client.channel)
    config = v2_stub.ModelConfig(v2.ModelConfigRequest(name="bucketed")).config
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 4, 16]

    # Other changes keep the model's own sizes; "off" and "default" are settings too.
    assert "bucket_sizes 1,4,16 (the model's)" in batching("--max-delay-ms", "1")
    assert "bucket_sizes none (the model's)" in batching("--bucket-sizes", "off")
    client.predict("bucketed", batch[:3], runtime="onnxruntime")
    (unpadded,) = [r for r in client.model("bucketed").versions[-1].loaded]
    assert list(unpadded.buckets) == []
    assert "(the server's)" in batching("--bucket-sizes", "default")
    assert "(the server's)" in batching("--max-delay-ms", "0")  # still the server's
    assert "(server default)" in batching("--reset")
    assert main(["batching", "bucketed", "--reset", "--off", "--server", client.address]) == 2
    assert "give it alone" in capsys.readouterr().err


def test_bad_bucket_sizes_are_refused(client: Client, digits_model: str) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for sizes, why in [
        ([4, 2], "batching.bucket_sizes=[4, 2]: must be strictly ascending"),
        ([0, 8], "batching.bucket_sizes=[0, 8]: each must be in [1, 65536]"),
        ([70000], "each must be in [1, 65536]"),
        (list(range(1, 18)), "at most 16 sizes"),
    ]:
        assert_rejected(
            lambda sizes=sizes: client.configure_batching(digits_model, bucket_sizes=sizes),
            invalid,
            why,
        )
    assert client.model(digits_model).batching.server_default  # nothing was stored
    for setting in ("8,4", "0", "x", "auto,1"):
        with pytest.raises(ValueError, match="bucket_sizes"):
            ServerConfig(bucket_sizes=setting)
    for setting, name in (("ort_cudnn_conv_algo_search", "FAST"), ("inference_precision", "fp8")):
        with pytest.raises(ValueError, match=setting):
            ServerConfig(**{setting: name})
    with pytest.raises(ValueError, match="cuda_graphs"):
        ServerConfig(cuda_graphs=True, bucket_sizes="off")
    assert ServerConfig(bucket_sizes="1,8,64").bucket_sizes == "1,8,64"


@CUDA
def test_cuda_buckets_agree_with_the_cpu(cnn) -> None:
    """Pinned staging, per-bucket sessions sharing weights, and CUDA graphs: all within the
    float32 parity bound (TF32 off) of the CPU's outputs."""
    module, path = cnn
    gpu = torch.device("cuda", torch.cuda.current_device())
    apply_tf32(RuntimeOptions())  # as the server does: float32 math, TF32 off
    expected = TorchRuntime("eager", module, CPU)
    sample = np.zeros((1, 1, 8, 8), np.float32)
    free = lambda: torch.cuda.mem_get_info(gpu)[0]  # noqa: E731
    runtimes = [
        BucketedRuntime(OnnxRuntime(path, gpu), SIZES, sample, free),
        BucketedRuntime(TorchRuntime("eager", copy.deepcopy(module).to(gpu), gpu), SIZES, sample),
        BucketedRuntime(
            TorchRuntime(
                "eager", copy.deepcopy(module).to(gpu), gpu, RuntimeOptions(cuda_graphs=True)
            ),
            SIZES,
            sample,
        ),
    ]
    for runtime in runtimes[:2]:  # the third was not told how to measure
        assert runtime.device_bytes > 0  # buffers, sessions and workspaces on the device
    for runtime in runtimes:
        for batch in _batches():
            np.testing.assert_allclose(runtime.run(batch), expected.run(batch), atol=1e-4)
