"""Frontend processes (`--frontends N`): Predict served by several interpreters on one port,
every other method forwarded to the server, changes seen everywhere, and processes that are
replaced, stopped or taken down with their server; through real server processes, on real
connections that the kernel spreads over the processes."""

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import assert_status
from tests.test_operations import GARBAGE, ServerProcess
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.config import ServerConfig
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb
from torchwire.v1 import torchwire_pb2_grpc as pb_grpc

TOKEN = "frontend-secret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
#: Connections per check: with the server and 2 frontends on the port, the chance that one
#: process gets none of 30 connections is 3 * (2/3)^30, about 2e-5.
CONNECTIONS = 30
FRONTENDS = 2


def frontend_pids(server_pid: int) -> set[int]:
    """The server's frontend processes."""
    found = set()
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"frontend" in command:
                found.add(int(child))
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def connections(address: str, count: int = CONNECTIONS) -> Iterator[list[pb_grpc.TorchWireStub]]:
    """Stubs on `count` connections of their own (not one shared subchannel)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(address, options=options) for _ in range(count)]
    try:
        yield [pb_grpc.TorchWireStub(channel) for channel in channels]
    finally:
        for channel in channels:
            channel.close()


def predict_request(model: str, rows: int = 1) -> pb.PredictRequest:
    batch = np.random.default_rng(rows).random((rows, 1, 8, 8), dtype=np.float32)
    return pb.PredictRequest(
        model_name=model, inputs=tensors.encode(batch), outputs=[pb.PREDICT_OUTPUT_RAW]
    )


def metric(metrics_port: int, line_start: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    """A server with two frontends, a token, metrics, and the MLP on the digits."""
    root = tmp_path_factory.mktemp("frontends")
    server = ServerProcess(
        root / "store",
        root / "server.log",
        "--frontends",
        str(FRONTENDS),
        "--shared-run-ms",  # every batched model runs in the server, however fast
        "0",
        "--auth-tokens",
        TOKEN,
        "--metrics-address",
        "127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        "--log-level",
        "INFO",
    )
    assert server.address, server.log.read_text()
    with Client(server.address, token=TOKEN) as client:
        client.train("front", "digits", epochs=1, val_fraction=0, seed=0).wait()
    log = server.log.read_text()
    metrics_port = int(log.split("metrics on ")[1].split()[0].rsplit(":", 1)[1])
    assert "v2 REST on 127.0.0.1:" in log
    yield server, metrics_port
    pids = frontend_pids(server.process.pid)
    server.stop()
    assert not any(alive(pid) for pid in pids)
    assert server.errors() == []


def test_every_process_serves_predict_and_counts_it(served: tuple[ServerProcess, int]) -> None:
    server, metrics_port = served
    assert len(frontend_pids(server.process.pid)) == FRONTENDS
    calls = 'torchwire_grpc_requests_total{code="OK",method="Predict"'
    before = metric(metrics_port, calls)
    answers = set()
    with connections(server.address) as stubs:
        for stub in stubs:
            for _ in range(3):
                answer = stub.Predict(predict_request("front"), metadata=AUTH)
                answers.add(answer.SerializeToString())
    assert len(answers) == 1  # the same answer from every process
    # The server's /metrics sums its frontends': every call counted once, and the model,
    # batched, loaded only in the server, which runs it for every process.
    assert metric(metrics_port, calls) - before == 3 * CONNECTIONS
    assert metric(metrics_port, "torchwire_models_loaded ") == 1


def test_an_unbatched_model_runs_in_every_process(served: tuple[ServerProcess, int]) -> None:
    server, metrics_port = served
    with Client(server.address, token=TOKEN) as client, connections(server.address) as stubs:
        expected = tensors.decode(stubs[0].Predict(predict_request("front", 3), metadata=AUTH).raw)
        client.configure_batching("front", enabled=False)
        try:
            for stub in stubs:
                answer = stub.Predict(predict_request("front", 3), metadata=AUTH)
                np.testing.assert_allclose(tensors.decode(answer.raw), expected, atol=1e-5)
            assert metric(metrics_port, "torchwire_models_loaded ") == 1 + FRONTENDS
        finally:
            client.configure_batching("front", reset=True)


def test_batched_requests_from_every_process_merge_into_one_run(
    served: tuple[ServerProcess, int],
) -> None:
    """30 connections, spread by the kernel over the server and its frontends, each send
    one row at once: the server's batcher waits for a full run of 30, whichever process
    parsed each request."""
    server, _ = served
    with Client(server.address, token=TOKEN) as client, connections(server.address) as stubs:
        for stub in stubs:  # connected: the calls below all reach a process at once
            stub.Predict(predict_request("front"), metadata=AUTH)
        client.configure_batching("front", max_batch_size=CONNECTIONS, max_delay_ms=1_000)
        try:
            calls = [
                stub.Predict.future(predict_request("front"), metadata=AUTH, timeout=60)
                for stub in stubs
            ]
            assert [list(call.result().batch_sizes) for call in calls] == [[CONNECTIONS]] * len(
                calls
            )
        finally:
            client.configure_batching("front", reset=True)


def test_a_deadline_ends_the_wait_for_the_servers_batcher(
    served: tuple[ServerProcess, int],
) -> None:
    """Each process that parsed one of these calls ends it at its 0.2 s deadline (its
    latency histogram says so), while the pieces wait 1 s for company in the server."""
    server, metrics_port = served
    series = "torchwire_grpc_request_seconds_"
    labels = 'method="Predict",service="torchwire.v1.TorchWire"}'
    ended, fast = f"{series}count{{{labels}", f'{series}bucket{{le="0.5",{labels}'
    with Client(server.address, token=TOKEN) as client, connections(server.address, 10) as stubs:
        for stub in stubs:  # connected: every call below reaches a process before its deadline
            stub.Predict(predict_request("front"), metadata=AUTH)
        before = metric(metrics_port, ended), metric(metrics_port, fast)
        client.configure_batching("front", max_batch_size=64, max_delay_ms=1_000)
        try:
            late = [
                stub.Predict.future(predict_request("front"), metadata=AUTH, timeout=0.2)
                for stub in stubs
            ]
            for call in late:
                assert call.exception(60).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            stop = time.monotonic() + 30
            while metric(metrics_port, ended) - before[0] < len(stubs):
                assert time.monotonic() < stop
                time.sleep(0.05)
            # Every handler ended within 0.5 s: none waited for the run, 1 s after.
            assert metric(metrics_port, fast) - before[1] == len(stubs)
        finally:
            client.configure_batching("front", reset=True)  # their pieces run, for nobody


def test_streams_stay_in_order_in_every_process(served: tuple[ServerProcess, int]) -> None:
    server, _ = served
    requests = [predict_request("front", rows) for rows in (1, 3, 2, 5, 1, 4, 2) * 3]
    with connections(server.address, 10) as stubs:
        expected = [tensors.decode(stubs[0].Predict(r, metadata=AUTH).raw) for r in requests]
        for stub in stubs:
            answers = list(stub.PredictStream(iter(requests), metadata=AUTH))
            assert len(answers) == len(expected)
            for answer, want in zip(answers, expected, strict=True):
                # Eager PyTorch: merged runs may round the last bit differently.
                np.testing.assert_allclose(tensors.decode(answer.raw), want, atol=1e-5)


def test_a_load_error_in_the_server_reaches_every_caller(
    served: tuple[ServerProcess, int],
) -> None:
    """A frontend asks the server to open a shared model; the server's refusal comes back
    over the link with its status and message."""
    server, _ = served
    request = predict_request("front")
    request.runtime = "onnxruntime"  # never exported
    with connections(server.address, 12) as stubs:
        for stub in stubs:
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, metadata=AUTH)
            assert_status(info.value, grpc.StatusCode.FAILED_PRECONDITION, "onnxruntime")


def test_other_methods_are_forwarded_with_their_status(served: tuple[ServerProcess, int]) -> None:
    server, _ = served
    with connections(server.address, 10) as stubs:
        for stub in stubs:
            models = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH).models
            assert "front" in [m.name for m in models]
            with pytest.raises(grpc.RpcError) as info:
                stub.GetModel(pb.GetModelRequest(name="no/such"), metadata=AUTH)
            assert_status(info.value, grpc.StatusCode.INVALID_ARGUMENT, "name", "no/such")
            with pytest.raises(grpc.RpcError) as info:
                stub.GetModel(pb.GetModelRequest(name="missing"), metadata=AUTH)
            assert_status(info.value, grpc.StatusCode.NOT_FOUND, "missing")


def test_garbage_and_missing_tokens_are_refused_everywhere(
    served: tuple[ServerProcess, int],
) -> None:
    server, _ = served
    for _ in range(10):
        with grpc.insecure_channel(
            server.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            for method in ("Predict", "ListModels"):
                call = channel.unary_unary(f"/torchwire.v1.TorchWire/{method}")
                with pytest.raises(grpc.RpcError) as info:
                    call(GARBAGE, metadata=AUTH, timeout=30)
                assert_status(info.value, grpc.StatusCode.INVALID_ARGUMENT, "not a valid")
                with pytest.raises(grpc.RpcError) as info:
                    call(b"", timeout=30)
                assert_status(info.value, grpc.StatusCode.UNAUTHENTICATED, "bearer token")


def watch_until_deadline(stub: pb_grpc.TorchWireStub, job_id: str) -> tuple[float, grpc.StatusCode]:
    """Watches a job with a 1 s deadline; how long that took, and the status it ended with."""
    began = time.monotonic()
    try:
        for _ in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=AUTH, timeout=1.0):
            pass
    except grpc.RpcError as err:
        return time.monotonic() - began, err.code()
    return time.monotonic() - began, grpc.StatusCode.OK


def test_a_forwarded_call_keeps_its_deadline(served: tuple[ServerProcess, int]) -> None:
    server, _ = served
    with Client(server.address, token=TOKEN) as client:
        job = client.train("slow", "digits", epochs=10_000, val_fraction=0)
        try:
            with connections(server.address, 6) as stubs, ThreadPoolExecutor(6) as pool:
                ended = pool.map(lambda stub: watch_until_deadline(stub, job.id), stubs)
                for seconds, code in ended:
                    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
                    assert seconds < 10
        finally:
            job.cancel()


def test_changes_reach_every_frontend_before_the_call_returns(
    served: tuple[ServerProcess, int],
) -> None:
    server, _ = served
    with (
        Client(server.address, token=TOKEN) as client,
        connections(server.address, 12) as stubs,
    ):
        client.train("changing", "digits", epochs=1, val_fraction=0, seed=0).wait()
        for stub in stubs:  # loaded in every process
            assert stub.Predict(predict_request("changing"), metadata=AUTH).version == 1
        client.configure_batching("changing", max_batch_size=1)
        for stub in stubs:
            answer = stub.Predict(predict_request("changing", 3), metadata=AUTH)
            assert list(answer.batch_sizes) == [1, 1, 1]
        client.train("changing", "digits", epochs=1, val_fraction=0, seed=1).wait()
        for stub in stubs:
            assert stub.Predict(predict_request("changing"), metadata=AUTH).version == 2
        client.delete_model("changing")
        for stub in stubs:
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(predict_request("changing"), metadata=AUTH)
            assert_status(info.value, grpc.StatusCode.NOT_FOUND, "changing")


def test_a_killed_frontend_is_replaced(served: tuple[ServerProcess, int]) -> None:
    """Killed while its pieces wait in the server's batcher: it fails its own calls only,
    its pieces still run with the others, and a new frontend takes its place."""
    server, _ = served
    with Client(server.address, token=TOKEN) as client, connections(server.address) as stubs:
        for stub in stubs:  # connected: the calls below all reach a process at once
            stub.Predict(predict_request("front"), metadata=AUTH)
        client.configure_batching("front", max_batch_size=64, max_delay_ms=1_000)
        try:
            calls = [
                stub.Predict.future(predict_request("front"), metadata=AUTH, timeout=60)
                for stub in stubs
            ]
            time.sleep(0.3)  # every piece is waiting for company in the server
            victim = min(frontend_pids(server.process.pid))
            os.kill(victim, signal.SIGKILL)
            codes, runs = [], set()
            for call in calls:
                try:
                    runs.add(tuple(call.result().batch_sizes))
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
        finally:
            client.configure_batching("front", reset=True)
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert runs == {(CONNECTIONS,)}  # one run served every piece, the dead frontend's too
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = frontend_pids(server.process.pid)
        if victim not in now and len(now) == FRONTENDS:
            break
        time.sleep(0.2)
    assert victim not in now
    assert len(now) == FRONTENDS
    with connections(server.address) as stubs:
        for stub in stubs:
            assert stub.Predict(predict_request("front"), metadata=AUTH).raw.shape == [1, 10]
    assert f"frontend process {victim} exited" in server.log.read_text()


def test_frontends_end_with_a_killed_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "store", tmp_path / "server.log", "--frontends", "1")
    assert server.address, server.log.read_text()
    (frontend,) = frontend_pids(server.process.pid)
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 30
    while alive(frontend) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(frontend)


def test_frontends_is_a_count_and_shared_run_ms_a_duration(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "store", tmp_path / "server.log", "--frontends", "-1")
    assert server.process.wait(timeout=60) == 2
    assert "frontends=-1: must be >= 0" in server.log.read_text()
    with pytest.raises(ValueError, match=r"shared_run_ms=-0.5: must be >= 0"):
        ServerConfig(shared_run_ms=-0.5)


def test_an_imported_torchscript_serves_in_every_process(
    served: tuple[ServerProcess, int], tmp_path: Path
) -> None:
    server, _ = served
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    path = tmp_path / "front.torchscript.pt"
    torch.jit.script(module).save(str(path))
    with Client(server.address, token=TOKEN) as client:  # forwarded when a frontend takes it
        client.import_model("front-ts", path, format="torchscript", input_shape=(1, 8, 8))
    request = predict_request("front-ts", 2)
    with torch.no_grad():
        expected = module(torch.from_numpy(tensors.decode(request.inputs).copy())).numpy()
    with connections(server.address, 12) as stubs:
        for stub in stubs:  # batched: the server runs it, in its child process, for all
            answer = stub.Predict(request, metadata=AUTH)
            np.testing.assert_allclose(tensors.decode(answer.raw), expected, atol=1e-5)


def test_v2_shared_memory_and_statistics_span_every_process(
    served: tuple[ServerProcess, int],
) -> None:
    """Regions live in the server: a frontend forwards the ModelInfer calls that name one.
    ModelStatistics sums the counts of every process."""
    server, _ = served
    batch = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    memory = shared_memory.SharedMemory(name=f"tw-front-{os.getpid()}", create=True, size=4096)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(server.address, options=options) for _ in range(CONNECTIONS)]
    try:
        np.ndarray((4096,), np.uint8, memory.buf)[: batch.nbytes] = batch.view(np.uint8).ravel()
        stubs = [v2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
        register = v2.SystemSharedMemoryRegisterRequest(
            name="front-io", key=f"/{memory.name}", byte_size=4096
        )
        stubs[0].SystemSharedMemoryRegister(register, metadata=AUTH)
        stats = v2.ModelStatisticsRequest(name="front", version="1")
        before = stubs[0].ModelStatistics(stats, metadata=AUTH).model_stats[0]
        request = v2.ModelInferRequest(model_name="front")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[4, 1, 8, 8])
        tensor.parameters["shared_memory_region"].string_param = "front-io"
        tensor.parameters["shared_memory_byte_size"].int64_param = batch.nbytes
        plain = v2.ModelInferRequest(model_name="front", raw_input_contents=[batch.tobytes()])
        plain.inputs.add(name="input", datatype="FP32", shape=[4, 1, 8, 8])
        expected = stubs[0].ModelInfer(plain, metadata=AUTH).raw_output_contents[0]
        for stub in stubs:
            assert stub.ModelInfer(request, metadata=AUTH).raw_output_contents[0] == expected
            assert stub.ModelInfer(plain, metadata=AUTH).raw_output_contents[0] == expected
        after = stubs[0].ModelStatistics(stats, metadata=AUTH).model_stats[0]
        served_requests = after.inference_stats.success.count - before.inference_stats.success.count
        assert served_requests == 1 + 2 * CONNECTIONS
        assert after.inference_count - before.inference_count == 4 * (1 + 2 * CONNECTIONS)
        unregister = v2.SystemSharedMemoryUnregisterRequest(name="front-io")
        stubs[0].SystemSharedMemoryUnregister(unregister, metadata=AUTH)
    finally:
        for channel in channels:
            channel.close()
        memory.close()
        memory.unlink()
