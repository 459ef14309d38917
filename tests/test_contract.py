"""The contract: generated stubs are fresh, and every rpc and field is commented."""

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
