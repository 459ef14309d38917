"""The contract: generated stubs are fresh, every rpc and field is commented, and the client
depends on the contract alone."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO = "torchwire/v1/torchwire.proto"
PROTOS = {
    PROTO: "torchwire/v1/torchwire",
    "torchwire/kserve/grpc_predict_v2.proto": "torchwire/kserve/grpc_predict_v2",
}


def _protoc(*args: str, protos: tuple[str, ...] = (PROTO,)) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos"), *args, *protos],
        check=True,
    )


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    _protoc(
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        protos=tuple(PROTOS),
    )
    for stem in PROTOS.values():
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = (tmp_path / (stem + suffix)).read_text()
            committed = (ROOT / "protos" / (stem + suffix)).read_text()
            assert fresh == committed, f"{stem}{suffix} is stale: run `make protos`"


def test_every_rpc_message_and_field_has_a_comment(tmp_path: Path) -> None:
    out = tmp_path / "set.pb"
    _protoc(f"--descriptor_set_out={out}", "--include_source_info")
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    proto = next(f for f in files.file if f.name == PROTO)
    assert proto.package == "torchwire.v1"
    commented = {
        tuple(loc.path) for loc in proto.source_code_info.location if loc.leading_comments.strip()
    }
    missing = []
    # Paths into FileDescriptorProto: 4 = message_type, 2 = field; 6 = service, 2 = method.
    for i, message in enumerate(proto.message_type):
        for j, field in enumerate(message.field):
            if (4, i, 2, j) not in commented:
                missing.append(f"{message.name}.{field.name}")
    for i, service in enumerate(proto.service):
        missing += [
            f"rpc {m.name}" for j, m in enumerate(service.method) if (6, i, 2, j) not in commented
        ]
    assert not missing, f"uncommented: {missing}"


CONTRACT = ("torchwire.v1", "torchwire.kserve", "torchwire.defaults", "torchwire.client")
"""What the client may import of ours, besides the contract package `torchwire` itself."""
SERVER_ONLY = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorboard")


def _ours_but_not_contract(module: str) -> bool:
    ours = module == "torchwire" or module.startswith("torchwire.")
    return ours and module != "torchwire" and not module.startswith(CONTRACT)


def test_the_client_imports_nothing_of_the_server() -> None:
    """No import in client/, not even a lazy one inside a function, names the server or torch."""
    found = []
    for path in sorted((ROOT / "client").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            found += [
                f"{path.name}:{node.lineno} {name}"
                for name in names
                if _ours_but_not_contract(name) or name.split(".")[0] in SERVER_ONLY
            ]
    assert not found, f"the client imports server code: {found}"


def test_a_fresh_interpreter_loads_the_client_without_the_server() -> None:
    """Every client module, imported in a new process, loads neither the server nor torch."""
    modules = sorted(f"torchwire.client.{p.stem}" for p in (ROOT / "client").glob("[!_]*.py"))
    code = f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    code += "print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(result.stdout)
    assert {"torchwire.client.cli", "torchwire.client.demo", *modules} <= set(loaded)
    assert [m for m in loaded if _ours_but_not_contract(m)] == []
    assert [m for m in loaded if m.split(".")[0] in SERVER_ONLY] == []
