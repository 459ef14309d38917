"""Operational safety through real server processes: one server per port and per store, a
shutdown that always ends, and client mistakes that are never reported as server faults."""

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import assert_rejected, start_server
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.v1 import torchwire_pb2 as pb

GRACE_S = 2.0
#: Bytes that no protobuf message parses: a tag of wire type 7 (there is none).
GARBAGE = b"\xff\xff\xff\xff\x0f\x07"
METHODS = [
    (service.full_name, method)
    for service in (
        pb.DESCRIPTOR.services_by_name["TorchWire"],
        v2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    )
    for method in service.methods
]


class ServerProcess:
    """`torchwire serve` in a process of its own, its log in a file."""

    def __init__(self, store: Path, log: Path, *flags: str, address: str = "127.0.0.1:0"):
        self.log = log
        with open(log, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "torchwire.service", "--address", address]
                + ["--store", str(store), "--grace-seconds", str(GRACE_S), *flags],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.process.stdout is not None
        self.first_line = self.process.stdout.readline()
        self.address = self.first_line.rsplit(" ", 1)[-1].strip()

    def stop(self) -> float:
        """SIGTERM; returns how long the process took to exit."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            assert self.process.wait(timeout=60) == 0
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return time.monotonic() - began

    def errors(self) -> list[str]:
        """The log's ERROR lines and tracebacks."""
        lines = self.log.read_text().splitlines()
        return [line for line in lines if " ERROR " in line or line.startswith("Traceback")]


def _refusal(store: Path, log: Path, *flags: str, address: str) -> str:
    """Starts a second server that must be refused; returns its one-line message."""
    second = ServerProcess(store, log, *flags, address=address)
    assert second.process.wait(timeout=60) == 2
    assert second.first_line == ""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server process for the checks that read its log."""
    root = tmp_path_factory.mktemp("operations")
    server = ServerProcess(root / "store", root / "server.log", "--log-level", "INFO")
    with Client(server.address) as client:
        client.train("ops", "digits", epochs=1, val_fraction=0).wait()
    yield server
    if server.process.poll() is None:
        server.stop()


def test_a_second_server_on_the_port_or_the_store_is_refused(
    served: ServerProcess, tmp_path: Path
) -> None:
    message = _refusal(tmp_path / "other", tmp_path / "port.log", address=served.address)
    assert message == (
        f"torchwire serve: cannot listen on {served.address}: address already in use "
        "(another torchwire server?)"
    )
    store = served.log.parent / "store"
    message = _refusal(store, tmp_path / "store.log", address="127.0.0.1:0")
    assert message.startswith(f"torchwire serve: store {str(store)!r} is in use by another")
    assert f"pid {served.process.pid}, serving on {served.address}" in message
    # Every call still reaches the first server, and it still knows its model.
    for _ in range(8):
        with Client(served.address) as client:
            assert [m.name for m in client.models()] == ["ops"]


def test_a_second_server_on_the_store_leaves_the_running_job_alone(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = ServerProcess(store, tmp_path / "first.log")
    try:
        with Client(first.address) as client:
            job = client.train("busy", "digits", epochs=10_000, patience=0, batch_size=8)
            next(e for e in job.events() if e.WhichOneof("kind") == "epoch_end")
            _refusal(store, tmp_path / "second.log", address="127.0.0.1:0")
            assert job.info().state == pb.JOB_STATE_RUNNING
            assert client.job(job.id).cancel().state == pb.JOB_STATE_CANCELLED
    finally:
        first.stop()
    # The lock went with the first server: a new one takes the store.
    ServerProcess(store, tmp_path / "third.log").stop()


def test_a_missing_data_root_is_refused_at_start(tmp_path: Path) -> None:
    message = _refusal(
        tmp_path / "store",
        tmp_path / "roots.log",
        "--data-roots",
        "/nonexistent",
        address="127.0.0.1:0",
    )
    assert message == "torchwire serve: data root '/nonexistent' is not a directory"


def _raw_call(channel: grpc.Channel, service: str, method, payload: bytes) -> grpc.RpcError:
    """Calls `method` with bytes that no message parses; returns the error."""
    path = f"/{service}/{method.name}"
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(path)
        run = lambda: list(call(iter([payload]), timeout=30))  # noqa: E731
    elif method.client_streaming:
        call = channel.stream_unary(path)
        run = lambda: call(iter([payload]), timeout=30)  # noqa: E731
    elif method.server_streaming:
        call = channel.unary_stream(path)
        run = lambda: list(call(payload, timeout=30))  # noqa: E731
    else:
        call = channel.unary_unary(path)
        run = lambda: call(payload, timeout=30)  # noqa: E731
    with pytest.raises(grpc.RpcError) as info:
        run()
    return info.value


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
def test_bytes_that_are_no_message_are_invalid_argument(
    served: ServerProcess, service: str, method
) -> None:
    with grpc.insecure_channel(served.address) as channel:
        err = _raw_call(channel, service, method, GARBAGE)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    index = "request[0]" if method.client_streaming else "request"
    expected = f"{index}: 6 bytes that are not a valid {method.input_type.full_name} message"
    assert err.details().startswith(expected)


def test_client_mistakes_and_cancels_write_no_error_to_the_log(served: ServerProcess) -> None:
    """Runs after the parametrized garbage calls above: none of them logged an ERROR, and
    neither do cancelled streams."""
    with Client(served.address) as client:
        for _ in range(5):
            stream = client.stub.PredictStream(iter([pb.PredictRequest(model_name="ops")] * 3))
            stream.cancel()
        watch = client.stub.WatchJob(pb.WatchJobRequest(job_id=client.jobs()[0].id))
        watch.cancel()
        assert client.models()  # still serving
    assert served.errors() == []


def test_sigterm_after_garbage_stream_messages_ends_within_the_bound(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "store", tmp_path / "server.log")
    with grpc.insecure_channel(server.address) as channel:
        stream = channel.stream_stream("/torchwire.v1.TorchWire/PredictStream")
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as info:
                list(stream(iter([GARBAGE] * 3), timeout=30))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.stop() < GRACE_S + 5
    assert server.errors() == []


def test_huge_ids_and_odd_values_are_cut_in_errors(client: Client) -> None:
    huge = "j" * 10_000_000
    for call in (
        lambda: client.stub.GetJob(pb.GetJobRequest(job_id=huge)),
        lambda: client.stub.CancelJob(pb.CancelJobRequest(job_id=huge)),
        lambda: client.stub.GetJob(pb.GetJobRequest(job_id="j" * 20_000)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details().startswith("job 'jjjj")
        assert len(info.value.details()) < 200


def test_a_nan_plugin_option_is_invalid_argument(client: Client) -> None:
    model = {"plugin": {"name": "anything", "options": {"width": float("nan")}}}
    assert_rejected(
        lambda: client.train("nan-plugin", "digits", model=model),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model.plugin.options",
        "is not JSON-representable",
    )


def test_garbage_without_a_token_is_unauthenticated(tmp_path: Path) -> None:
    server = start_server(tmp_path / "store", auth_tokens="secret")
    try:
        with grpc.insecure_channel(server.address) as channel:
            call = channel.unary_unary("/torchwire.v1.TorchWire/GetJob")
            with pytest.raises(grpc.RpcError) as info:
                call(GARBAGE, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                call(GARBAGE, timeout=30, metadata=[("authorization", "Bearer secret")])
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(grace=1)


def test_a_link_out_of_a_data_root_is_invalid_argument(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "table.csv").write_text("x,y\n1,2\n")
    (root / "link.csv").symlink_to(outside / "table.csv")
    server = start_server(tmp_path / "store", data_roots=str(root))
    try:
        with Client(server.address) as client:
            for path in ("link.csv", str(root / "link.csv"), "../outside/table.csv"):
                assert_rejected(
                    lambda path=path: client.train(
                        "linked", source={"format": "csv", "path": path}
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "dataset.source.path",
                    "resolves outside the server's data roots",
                )
            assert_rejected(
                lambda: client.train("linked", source={"format": "csv", "path": "missing.csv"}),
                grpc.StatusCode.NOT_FOUND,
                "does not exist under the data roots",
            )
    finally:
        server.stop(grace=1)


def test_cancelled_streams_are_counted_as_cancelled(tmp_path: Path) -> None:
    server = start_server(tmp_path / "store", metrics_address="127.0.0.1:0")
    try:
        with Client(server.address) as client:
            job = client.train("metered", "digits", epochs=10_000, patience=0, batch_size=8)
            watching = client.stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
            next(watching)
            watching.cancel()
            client.job(job.id).cancel()
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        deadline = time.monotonic() + 30
        wanted = 'method="WatchJob",service="torchwire.v1.TorchWire"'
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            counted = [
                line
                for line in text.splitlines()
                if line.startswith("torchwire_grpc_requests_total{") and wanted in line
            ]
            if counted:
                break
            threading.Event().wait(0.05)
        assert counted
        assert all('code="CANCELLED"' in line for line in counted), counted
    finally:
        server.stop(grace=1)
