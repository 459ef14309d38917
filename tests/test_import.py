"""ImportModel through a real channel: ONNX, TorchScript and state_dict files made by plain
PyTorch outside torchwire are imported, served, evaluated and fine-tuned; every bad file is
refused with a status that names the problem, and leaves nothing registered."""

import hashlib
import io
import multiprocessing
import pickle
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

from tests.conftest import assert_rejected, start_server
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.core.architectures import MLP, MLPParams
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.server import TorchwireServer
from torchwire.v1 import torchwire_pb2 as pb

DIGITS = BUILTIN_DATASETS["digits"]
X_TRAIN, Y_TRAIN = DIGITS.load("train")
X_TEST, Y_TEST = DIGITS.load("test")
CLASSES = [str(d) for d in range(10)]
INVALID, EXHAUSTED, PRECONDITION = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def _digits_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _export_onnx(module: nn.Module, path: Path, external_data: bool = False) -> Path:
    torch.onnx.export(
        module,
        (torch.randn(2, 1, 8, 8),),
        str(path),
        dynamo=True,
        external_data=external_data,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imports")


@pytest.fixture(scope="module")
def onnx_file(files: Path) -> Path:
    """An ONNX file from plain torch.onnx.export, outside torchwire."""
    return _export_onnx(_digits_net(), files / "digits.onnx")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _names(client: Client) -> set[str]:
    return {m.name for m in client.models()}


def test_onnx_import_serves_as_onnxruntime_runs_it(client: Client, onnx_file: Path) -> None:
    response = client.import_model("imported-onnx", onnx_file, classes=CLASSES)
    version = response.version
    assert response.model_name == "imported-onnx"
    assert version.imported.format == pb.IMPORT_FORMAT_ONNX
    assert version.imported.file_name == "digits.onnx"
    assert version.imported.sha256 == _sha256(onnx_file)
    assert version.imported.size_bytes == onnx_file.stat().st_size
    assert list(version.runtimes) == ["onnxruntime"]
    assert list(version.input_shape) == [1, 8, 8]
    assert version.input_dtype == "float32"
    assert version.output_size == 10
    assert not version.job_id
    assert not version.HasField("training")
    assert [a.imported for a in version.artifacts] == [True]
    shown = client.model("imported-onnx").versions[-1]
    assert shown.imported == version.imported
    assert list(shown.runtimes) == ["onnxruntime"]

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: X_TEST})[0]
    result = client.predict("imported-onnx", X_TEST[:100])
    assert result.runtime == "onnxruntime"
    assert result.batch_sizes == [64, 36]  # batching splits it at the server's max_batch_size
    np.testing.assert_allclose(result.raw, expected[:100], atol=1e-5)
    assert result.top_labels[0] == [CLASSES[int(expected[0].argmax())]]

    evaluation = client.evaluate("imported-onnx", "digits")
    assert evaluation.num_samples == len(Y_TEST)
    accuracy = float((expected.argmax(1) == Y_TEST).mean())
    assert evaluation.metrics["accuracy"] == pytest.approx(accuracy)
    log_probs = torch.log_softmax(torch.from_numpy(expected), 1)
    loss = float(nn.functional.nll_loss(log_probs, torch.from_numpy(Y_TEST)))
    assert evaluation.loss == pytest.approx(loss, rel=1e-4)

    stub = v2_grpc.GRPCInferenceServiceStub(client.channel)
    infer = stub.ModelInfer(
        v2.ModelInferRequest(
            model_name="imported-onnx",
            inputs=[
                v2.ModelInferRequest.InferInputTensor(
                    name="input", datatype="FP32", shape=[3, 1, 8, 8]
                )
            ],
            raw_input_contents=[X_TEST[:3].tobytes()],
        )
    )
    names = [o.name for o in infer.outputs]
    raw = np.frombuffer(infer.raw_output_contents[names.index("output")], "<f4")
    np.testing.assert_allclose(raw.reshape(3, 10), expected[:3], atol=1e-5)

    # No checkpoint: no eager runtime, nothing to export from.
    assert_rejected(
        lambda: client.predict("imported-onnx", X_TEST[:1], runtime="eager"),
        PRECONDITION,
        "imported from onnx",
    )
    assert_rejected(
        lambda: client.export("imported-onnx", "torchscript"), PRECONDITION, "no state_dict"
    )


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def test_torchscript_import_serves_from_a_child_process(client: Client, files: Path) -> None:
    module = _digits_net()
    path = files / "digits.torchscript.pt"
    torch.jit.script(module).save(str(path))
    response = client.import_model(
        "imported-ts",
        path,
        format="torchscript",
        input_shape=(1, 8, 8),
        classes=CLASSES,
        eval_transforms=[{"normalize": {"mean": [0.0], "std": [1.0]}}],
    )
    assert list(response.version.runtimes) == ["torchscript"]
    assert response.version.image_mode == "L"  # one channel, with eval_transforms
    with torch.no_grad():
        expected = module(torch.from_numpy(X_TEST[:5])).numpy()
    result = client.predict("imported-ts", X_TEST[:5])
    assert result.runtime == "torchscript"
    np.testing.assert_allclose(result.raw, expected, atol=1e-5)

    images = [_png(x[0]) for x in X_TEST[:5]]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)), np.float32) / 255 for b in images])
    with torch.no_grad():
        from_images = module(torch.from_numpy(pixels[:, None])).numpy()
    np.testing.assert_allclose(
        client.predict("imported-ts", images=images).raw, from_images, atol=1e-5
    )

    # The module runs in a child process of the server (this test's process); one that dies
    # is started again by the next request.
    (child,) = [p for p in multiprocessing.active_children() if "'imported-ts' v1" in p.name]
    child.kill()
    child.join()
    np.testing.assert_allclose(client.predict("imported-ts", X_TEST[:5]).raw, expected, atol=1e-5)
    assert_rejected(
        lambda: client.predict("imported-ts", X_TEST[:1], runtime="eager"),
        PRECONDITION,
        "imported from torchscript",
    )


def _resnet18_for_digits() -> nn.Module:
    """torchvision's resnet18 for 10 classes with a one-channel first convolution."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _pretrain(model: nn.Module, epochs: int) -> nn.Module:
    """Plain PyTorch training on the digits: the weights a user brings."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.utils.data.TensorDataset(torch.from_numpy(X_TRAIN), torch.from_numpy(Y_TRAIN))
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=generator)
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    return model.eval()


def test_resnet18_state_dict_imports_and_fine_tunes(client: Client, files: Path) -> None:
    model = _pretrain(_resnet18_for_digits(), epochs=1)
    path = files / "resnet18-digits.pth"
    torch.save(model.state_dict(), path)
    response = client.import_model(
        "pretrained-resnet",
        path,
        format="state_dict",
        architecture="torchvision:resnet18",
        input_shape=(1, 8, 8),
        classes=CLASSES,
    )
    assert list(response.version.runtimes) == ["eager"]
    assert response.version.output_size == 10  # read from the state_dict's head
    with torch.no_grad():
        expected = model(torch.from_numpy(X_TEST[:8])).numpy()
    np.testing.assert_allclose(
        client.predict("pretrained-resnet", X_TEST[:8]).raw, expected, atol=1e-4
    )

    def first_epoch(name: str, **init) -> tuple[float, int]:
        job = client.train(
            name,
            "digits",
            model={"torchvision": {"name": "resnet18"}},
            epochs=1,
            batch_size=128,
            learning_rate=1e-4,
            val_fraction=0.0,
            seed=0,
            **init,
        )
        loss = job.wait().history[0].train_loss
        started = next(e.started for e in job.events() if e.WhichOneof("kind") == "started")
        return loss, started.warm_started_tensors

    tuned, warm = first_epoch("resnet-tuned", init_from="pretrained-resnet")
    fresh, cold = first_epoch("resnet-fresh")
    assert warm == len(model.state_dict())
    assert cold == 0
    print(f"first epoch's loss: {tuned:.3f} fine-tuned, {fresh:.3f} fresh")
    assert tuned < 0.5 * fresh, (tuned, fresh)


def test_mlp_state_dict_in_a_wrapper_exports_to_both_formats(client: Client, files: Path) -> None:
    module = MLP((1, 8, 8), 10, MLPParams((32,))).eval()
    path = files / "mlp.ckpt"
    # As DDP and Lightning-style checkpoints hold it: nested, with a "module." prefix.
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}, "epoch": 3},
        path,
    )
    client.import_model(
        "imported-mlp",
        path,
        format="state_dict",
        architecture={"mlp": {"hidden_sizes": [32]}},
        input_shape=(1, 8, 8),
    )
    with torch.no_grad():
        expected = module(torch.from_numpy(X_TEST[:4])).numpy()
    for fmt in ("onnx", "torchscript"):
        assert client.export("imported-mlp", fmt).max_abs_diff < 1e-4
    runtimes = client.model("imported-mlp").versions[-1].runtimes
    assert list(runtimes) == ["onnxruntime", "torchscript", "eager"]
    for runtime in runtimes:
        result = client.predict("imported-mlp", X_TEST[:4], runtime=runtime)
        np.testing.assert_allclose(result.raw, expected, atol=1e-4)


# ------------------------------------------------------------------ bad files


def _header(name: str, path: Path, fmt: int, **fields) -> pb.ImportHeader:
    return pb.ImportHeader(
        model_name=name,
        format=fmt,
        file_name=path.name,
        size_bytes=path.stat().st_size,
        **fields,
    )


def _stream(header: pb.ImportHeader, data: bytes, sha256: str | None) -> list:
    messages = [pb.ImportModelRequest(header=header)]
    messages += [pb.ImportModelRequest(chunk=data[i : i + 1000]) for i in range(0, len(data), 1000)]
    if sha256 is not None:
        messages.append(pb.ImportModelRequest(trailer=pb.ImportTrailer(sha256=sha256)))
    return messages


def _assert_nothing_left(client: Client, server: TorchwireServer, name: str) -> None:
    assert name not in _names(client)
    assert not server.store.layout.model_dir(name).exists()
    assert not any(server.store.layout.imports.iterdir())


class Payload:
    """Pickled, it calls open(marker, "w") when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_never_runs(client: Client, server, files: Path) -> None:
    marker = files / "payload-ran"
    path = files / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    assert_rejected(
        lambda: client.import_model(
            "evil", path, format="state_dict", architecture="mlp", input_shape=(2,)
        ),
        INVALID,
        "weights_only",
    )
    assert_rejected(
        lambda: client.import_model("evil", path, format="torchscript", input_shape=(2,)),
        INVALID,
        "cannot be loaded as TorchScript",
    )
    assert not marker.exists()
    _assert_nothing_left(client, server, "evil")
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is real: unpickling runs it
    assert marker.exists()


def _onnx_with_node(path: Path, domain: str, op: str, batch: str | int = "n") -> Path:
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
    )
    imports = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save_model(helper.make_model(graph, opset_imports=imports), str(path))
    return path


def test_bad_onnx_files_are_refused(client: Client, server, files: Path, onnx_file) -> None:
    unknown = _onnx_with_node(files / "unknown-op.onnx", "", "Frobnicate")
    custom = _onnx_with_node(files / "custom-op.onnx", "com.example", "Frobnicate")
    fixed = _onnx_with_node(files / "fixed-batch.onnx", "", "Relu", batch=1)
    external = files / "external" / "model.onnx"
    external.parent.mkdir()
    onnx.save_model(
        onnx.load_model(str(onnx_file)),
        str(external),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    cases = [
        (unknown, {}, "Frobnicate"),
        (custom, {}, "custom op"),
        (fixed, {}, "dynamic batch"),
        (external, {}, "external data"),
        (onnx_file, {"input_shape": (3, 8, 8)}, "conflicts with the file's input"),
        (onnx_file, {"input_dtype": "int64"}, "the file's input is float32"),
        (onnx_file, {"classes": ["a", "b"]}, "name 10 classes"),
    ]
    for path, options, fragment in cases:
        assert_rejected(
            lambda p=path, o=options: client.import_model("bad-onnx", p, **o), INVALID, fragment
        )
    _assert_nothing_left(client, server, "bad-onnx")


def test_state_dicts_that_do_not_fit_are_refused(client: Client, server, files: Path) -> None:
    path = files / "mlp-64-32-10.pt"
    torch.save(MLP((1, 8, 8), 10, MLPParams((32,))).state_dict(), path)
    cases = [
        ({"architecture": "cnn"}, "missing keys"),
        ({"architecture": {"mlp": {"hidden_sizes": [32]}}, "input_shape": (1, 4, 4)}, "body.1"),
        ({"architecture": {"mlp": {"hidden_sizes": [32]}}, "output_size": 5}, "shape mismatch"),
        ({"architecture": "torchvision:no_such_net"}, "model.torchvision.name"),
        ({}, "names its architecture"),
    ]
    for options, fragment in cases:
        options = {"input_shape": (1, 8, 8), **options}
        assert_rejected(
            lambda o=options: client.import_model("bad-weights", path, format="state_dict", **o),
            INVALID,
            fragment,
        )
    _assert_nothing_left(client, server, "bad-weights")


def test_truncated_and_corrupted_uploads_are_refused(client, server, onnx_file: Path) -> None:
    data = onnx_file.read_bytes()
    header = _header("cut-short", onnx_file, pb.IMPORT_FORMAT_ONNX)
    good = hashlib.sha256(data).hexdigest()
    cases = [
        (_stream(header, data[: len(data) // 2], None), "without its trailer"),
        (_stream(header, data[: len(data) // 2], good), "cut short"),
        (_stream(header, data, "0" * 64), "corrupted"),
        (_stream(header, data + b"more", good), "more bytes arrived"),
        (_stream(header, data, good)[1:], "the first message must be the import header"),
        (_stream(header, data, good) + _stream(header, b"", None)[:1], "message["),
    ]
    for messages, fragment in cases:
        assert_rejected(lambda m=messages: client.stub.ImportModel(iter(m)), INVALID, fragment)
    _assert_nothing_left(client, server, "cut-short")


def test_bad_headers_are_refused_before_the_file(client, server) -> None:
    def header(**fields) -> pb.ImportHeader:
        base = {"model_name": "bad-header", "format": pb.IMPORT_FORMAT_ONNX, "size_bytes": 100}
        return pb.ImportHeader(**{**base, **fields})

    cases = [
        (header(format=0), "format"),
        (header(model_name="../etc"), "model_name"),
        (header(size_bytes=0), "size_bytes"),
        (header(format=pb.IMPORT_FORMAT_TORCHSCRIPT), "input_shape"),
        (header(input_shape=[0, 8]), "input_shape"),
        (header(task="ranking"), "task"),
        (header(task="regression", classes=["a"]), "regression model has no classes"),
        (header(image_mode="CMYK"), "image_mode"),
        (header(architecture=pb.ModelSpec(mlp=pb.MLPSpec())), "state_dict import only"),
        (header(input_dtype="complex64"), "input_dtype"),
        (header(eval_transforms=[pb.Transform(resize=pb.Resize())]), "eval_transforms"),
    ]
    for message, fragment in cases:
        assert_rejected(
            lambda h=message: client.stub.ImportModel(iter([pb.ImportModelRequest(header=h)])),
            INVALID,
            fragment,
        )
    assert "bad-header" not in _names(client)


def test_oversized_files_are_refused(tmp_path: Path, onnx_file: Path) -> None:
    server = start_server(tmp_path / "store", max_import_bytes=1000)
    try:
        with Client(server.address, timeout=60) as client:
            assert_rejected(
                lambda: client.import_model("too-big", onnx_file),
                EXHAUSTED,
                "max_import_bytes=1000",
            )
            assert "too-big" not in _names(client)
    finally:
        server.stop(grace=1)
