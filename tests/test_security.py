"""Bearer tokens, TLS and mutual TLS, through real channels and real certificates."""

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import assert_rejected, start_server
from torchwire.client import Client
from torchwire.service.server import TorchwireServer
from torchwire.v1 import torchwire_pb2 as pb

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("auth")
    tokens = root / "tokens"
    tokens.write_text("# operators\nfile-token  \n\n")
    server = start_server(root / "store", auth_tokens="s3cret,other", auth_tokens_file=str(tokens))
    yield server
    server.stop(grace=1)


def test_calls_without_a_valid_token_are_unauthenticated(guarded: TorchwireServer) -> None:
    for token in (None, "wrong", "s3cre", "Bearer s3cret"):
        with Client(guarded.address, token=token) as client:
            stub = client.stub
            for call in (
                lambda s=stub: s.ListModels(pb.ListModelsRequest()),
                lambda s=stub: s.Predict(pb.PredictRequest(model_name="m")),
                lambda s=stub: list(s.WatchJob(pb.WatchJobRequest(job_id="j"))),
                lambda s=stub: s.UploadDataset(iter([pb.UploadDatasetRequest()])),
                lambda s=stub: list(s.PredictStream(iter([pb.PredictRequest()]))),
            ):
                assert_rejected(call, UNAUTHENTICATED, "bearer token")
            # Health checks stay open, for load balancers and orchestrators.
            health = health_pb2_grpc.HealthStub(client.channel)
            status = health.Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_valid_tokens_from_the_list_and_the_file_are_let_in(guarded: TorchwireServer) -> None:
    for token in ("s3cret", "other", "file-token"):
        with Client(guarded.address, token=token) as client:
            assert {d.name for d in client.datasets()} >= {"digits"}
            # A refusal on the merits, not on the token.
            assert_rejected(
                lambda c=client: c.stub.GetModel(pb.GetModelRequest(name="nope")),
                grpc.StatusCode.NOT_FOUND,
                "'nope'",
            )


def test_the_cli_passes_its_token(guarded: TorchwireServer) -> None:
    torchwire = str(Path(sys.executable).with_name("torchwire"))
    denied = subprocess.run(
        [torchwire, "models", "--server", guarded.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode == 1
    assert "UNAUTHENTICATED" in denied.stderr
    allowed = subprocess.run(
        [torchwire, "models", "--server", guarded.address],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TORCHWIRE_TOKEN": "s3cret", "PATH": "/usr/bin:/bin"},
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "no models" in allowed.stdout


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=torchwire-test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    for name, san in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(san + "\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN=torchwire-{name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return d


def _datasets(address: str, **tls) -> list[str]:
    with Client(address, timeout=10, **tls) as client:
        return [d.name for d in client.datasets()]


def _rest_ready(port: int, context: ssl.SSLContext | None, scheme: str = "https") -> bool:
    url = f"{scheme}://127.0.0.1:{port}/v2/health/ready"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return json.loads(response.read())["ready"]


def test_tls(tmp_path: Path, certificates: Path) -> None:
    d = certificates
    server = start_server(
        tmp_path,
        tls_cert=str(d / "server.pem"),
        tls_key=str(d / "server.key"),
        http_address="127.0.0.1:0",
    )
    try:
        assert "digits" in _datasets(server.address, tls_ca=d / "ca.pem")
        # A plaintext client cannot talk to a TLS server.
        assert_rejected(lambda: _datasets(server.address), grpc.StatusCode.UNAVAILABLE)
        # The REST port serves HTTPS with the same certificate, and no plain HTTP.
        trusting = ssl.create_default_context(cafile=str(d / "ca.pem"))
        assert _rest_ready(server.http_port, trusting)
        with pytest.raises(urllib.error.URLError):
            _rest_ready(server.http_port, ssl.create_default_context())  # unknown CA
        with pytest.raises((ConnectionError, urllib.error.URLError)):
            _rest_ready(server.http_port, None, scheme="http")
    finally:
        server.stop(grace=1)


@pytest.mark.parametrize("frontends", [0, 1])
def test_mutual_tls(tmp_path: Path, certificates: Path, frontends: int) -> None:
    """With a frontend, connections land on either process: each needs the certificates."""
    d = certificates
    server = start_server(
        tmp_path,
        tls_cert=str(d / "server.pem"),
        tls_key=str(d / "server.key"),
        tls_client_ca=str(d / "ca.pem"),
        frontends=frontends,
        http_address="127.0.0.1:0",
    )
    try:
        mine = {"tls_ca": d / "ca.pem", "tls_cert": d / "client.pem", "tls_key": d / "client.key"}
        # REST requires the client certificate too.
        https = ssl.create_default_context(cafile=str(d / "ca.pem"))
        with pytest.raises((ConnectionError, ssl.SSLError, urllib.error.URLError)):
            _rest_ready(server.http_port, https)
        https.load_cert_chain(str(d / "client.pem"), str(d / "client.key"))
        assert _rest_ready(server.http_port, https)
        x = np.zeros((1, 1, 8, 8), np.float32)
        for _ in range(4 if frontends else 1):
            assert "digits" in _datasets(server.address, **mine)
            # Without a client certificate the handshake fails.
            assert_rejected(
                lambda: _datasets(server.address, tls_ca=d / "ca.pem"),
                grpc.StatusCode.UNAVAILABLE,
            )
            with Client(server.address, **mine) as client:
                assert_rejected(lambda c=client: c.predict("nope", x), grpc.StatusCode.NOT_FOUND)
    finally:
        server.stop(grace=1)


def test_the_default_address_is_loopback() -> None:
    from torchwire.service.config import ServerConfig

    assert ServerConfig().address.startswith("127.0.0.1:")
