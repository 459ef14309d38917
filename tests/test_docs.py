"""The grpcurl examples in docs/protocol.md, run verbatim against a real server."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchwire.client import Client

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
BLOCKS = re.findall(r"```sh\n(.*?)```", DOC.read_text().split("## grpcurl", 1)[1], re.S)
GRPCURL_DIR = str(Path(sys.executable).parent)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.splitlines()[-1][:40])
def test_grpcurl_examples_run(client: Client, digits_model: str, block: str) -> None:
    expected = re.search(r"# expect: (.*)", block).group(1)
    script = block.replace("127.0.0.1:50051", client.address)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{GRPCURL_DIR}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_the_examples_are_found() -> None:
    assert len(BLOCKS) == 5
