"""Distributed data-parallel training through the real server: processes launched by
torch.distributed's elastic launcher on gloo, a second machine joining through `torchwire
worker`, cancellation and a killed rank, with nothing left running."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from tests.conftest import assert_rejected, start_server
from tests.imagedata import write_regression_csv
from torchwire.client import Client
from torchwire.service.core.distributed import shared_gpus
from torchwire.service.server import TorchwireServer
from torchwire.v1 import torchwire_pb2 as pb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _ranks(parent: int) -> list[int]:
    """The training processes the elastic agent `parent` spawned."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _running_ranks(server: TorchwireServer, job_id: str, count: int) -> tuple[int, list[int]]:
    """The job's agent pid and its `count` rank pids, once training has begun."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = server.jobs._running.get(job_id)
        if run is not None and len(ranks := _ranks(run.process.pid)) == count:
            return run.process.pid, ranks
        time.sleep(0.1)
    raise AssertionError("the ranks did not start")


def _wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "processes were left running"


def test_two_processes_on_gloo_train_as_well_as_one(client: Client) -> None:
    # Per-process batch 32 on 2 ranks is the single process's batch 64: the same updates.
    job = client.train(
        "ddp-digits",
        "digits",
        epochs=12,
        batch_size=32,
        seed=0,
        device="cpu",  # gloo: two ranks on one GPU are refused (see the CUDA test)
        distributed={"nproc_per_node": 2},
    )
    final = job.wait()
    started = next(e.started for e in job.events() if e.WhichOneof("kind") == "started")
    assert started.world_size == 2
    assert started.train_samples == 1293
    assert started.steps_per_epoch == 21  # ceil(ceil(1293 / 2) / 32)
    client.train("ddp-baseline", "digits", epochs=12, batch_size=64, seed=0, device="cpu").wait()
    ddp_accuracy = client.evaluate("ddp-digits", "digits").metrics["accuracy"]
    single_accuracy = client.evaluate("ddp-baseline", "digits").metrics["accuracy"]
    assert ddp_accuracy > 0.93
    assert abs(ddp_accuracy - single_accuracy) < 0.03
    assert len(final.history) == 12
    # The checkpoint holds the unwrapped state_dict: one process serves it, and exports it.
    x = np.zeros((3, 1, 8, 8), np.float32)
    assert client.predict("ddp-digits", x, runtime="eager").raw.shape == (3, 10)
    assert client.export("ddp-digits", "onnx").max_abs_diff < 1e-4
    recorded = client.model("ddp-digits").versions[-1].training.distributed
    assert recorded.nproc_per_node == 2


def test_cancelling_a_distributed_job_stops_every_rank(
    client: Client, server: TorchwireServer
) -> None:
    job = client.train(
        "ddp-cancel",
        "digits",
        epochs=10000,
        patience=0,
        device="cpu",
        distributed={"nproc_per_node": 2},
    )
    agent, ranks = _running_ranks(server, job.id, 2)
    next(e for e in job.events() if e.WhichOneof("kind") == "epoch_end")
    assert job.cancel().state == pb.JOB_STATE_CANCELLED
    _wait_gone([agent, *ranks])


def test_a_killed_rank_fails_the_job_with_a_clear_reason(
    client: Client, server: TorchwireServer
) -> None:
    job = client.train(
        "ddp-killed",
        "digits",
        epochs=10000,
        patience=0,
        device="cpu",
        distributed={"nproc_per_node": 2},
    )
    agent, ranks = _running_ranks(server, job.id, 2)
    next(e for e in job.events() if e.WhichOneof("kind") == "epoch_end")
    os.kill(ranks[-1], signal.SIGKILL)
    final = job.wait(raise_on_failure=False)
    assert final.state == pb.JOB_STATE_FAILED
    assert "distributed training failed: rank" in final.error
    assert "SIGKILL" in final.error
    _wait_gone([agent, *ranks])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def multi_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchwireServer]:
    """A server that accepts jobs spanning machines (--multi-node)."""
    server = start_server(tmp_path_factory.mktemp("multi-node"), multi_node=True)
    yield server
    server.stop(grace=5)


def _join(server: TorchwireServer, job_id: str, node: Path) -> subprocess.CompletedProcess:
    """`torchwire worker` as a second machine would run it, with a store of its own."""
    command = [sys.executable, "-m", "torchwire.client.cli", "worker", job_id]
    command += ["--server", server.address, "--store-dir", str(node / "store")]
    command += ["--data-roots", str(node / "data")]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _two_nodes(client: Client, name: str, **options) -> Any:
    endpoint = f"127.0.0.1:{_free_port()}"
    parallel = {"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": endpoint}
    return client.train(name, distributed=parallel, seed=0, device="cpu", **options)


def test_a_second_machine_joins_through_torchwire_worker(
    multi_node: TorchwireServer, tmp_path: Path
) -> None:
    with Client(multi_node.address, timeout=60) as client:
        job = _two_nodes(client, "two-nodes", dataset="digits", epochs=4, learning_rate=0.004)
        worker = _join(multi_node, job.id, tmp_path)
        assert worker.returncode == 0, worker.stderr[-2000:]
        final = job.wait()
        started = next(e.started for e in job.events() if e.WhichOneof("kind") == "started")
    assert started.world_size == 2
    assert final.history[-1].val_metrics["accuracy"] > 0.8
    assert not list((tmp_path / "store").glob("jobs/*"))  # only the server's machine writes


def test_machines_with_different_data_fail_the_job_instead_of_hanging(
    multi_node: TorchwireServer, tmp_path: Path
) -> None:
    write_regression_csv(multi_node.config.store_dir / "data" / "shared.csv", rows=200, seed=0)
    write_regression_csv(tmp_path / "data" / "shared.csv", rows=210, seed=0)
    with Client(multi_node.address, timeout=60) as client:
        job = _two_nodes(
            client,
            "diverging",
            source={"format": "csv", "path": "shared.csv", "feature_columns": ["x1", "x2"]},
            loss="mse",
        )
        worker = _join(multi_node, job.id, tmp_path)
        final = job.wait(raise_on_failure=False)
    assert worker.returncode == 1
    assert final.state == pb.JOB_STATE_FAILED
    assert "the machines' data differ" in final.error


def test_bad_distributed_options_are_refused(client: Client) -> None:
    def train(**distributed):
        return lambda: client.train("bad", "digits", device="cpu", distributed=distributed)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert_rejected(train(nproc_per_node=0), invalid, "distributed.nproc_per_node=0")
    assert_rejected(train(nproc_per_node=2, backend="mpi"), invalid, "distributed.backend='mpi'")
    assert_rejected(train(nproc_per_node=2, nnodes=2), invalid, "distributed.rdzv_endpoint")
    assert_rejected(
        train(nproc_per_node=1, nnodes=2, rdzv_endpoint="127.0.0.1:29400"),
        invalid,
        "distributed.nnodes=2",
        "--multi-node",
    )
    assert_rejected(
        train(nproc_per_node=2, rdzv_endpoint="nohost"), invalid, "distributed.rdzv_endpoint"
    )
    assert_rejected(train(nproc_per_node=1, max_restarts=99), invalid, "distributed.max_restarts")
    assert_rejected(
        lambda: client.train(
            "bad",
            "digits",
            batch_size=700,
            drop_last=True,
            device="cpu",
            distributed={"nproc_per_node": 2},
        ),
        invalid,
        "config.drop_last",
    )
    assert_rejected(
        lambda: client.train(
            "bad", "digits", device="cpu", distributed={"nproc_per_node": 2, "backend": "nccl"}
        ),
        invalid,
        "needs CUDA",
    )


def test_a_killed_rank_restarts_within_max_restarts_from_the_last_checkpoint(
    client: Client, server: TorchwireServer
) -> None:
    job = client.train(
        "ddp-restarted",
        "digits",
        epochs=6,
        batch_size=16,
        patience=0,
        device="cpu",
        distributed={"nproc_per_node": 2, "max_restarts": 1},
    )
    _, ranks = _running_ranks(server, job.id, 2)
    next(e for e in job.events() if e.checkpoint_saved.role == "last")
    os.kill(ranks[0], signal.SIGKILL)
    final = job.wait()
    starts = [e.started.start_epoch for e in job.events() if e.WhichOneof("kind") == "started"]
    assert len(starts) == 2
    assert starts[1] > 1  # the restart went on from last.pt
    assert [m.epoch for m in final.history] == list(range(1, 7))
    _wait_gone(ranks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_on_cuda_with_mixed_precision_and_channels_last(client: Client) -> None:
    gpus = min(2, torch.cuda.device_count())
    job = client.train(
        "ddp-cuda",
        "digits",
        architecture="cnn",
        channels=[16],
        epochs=20,  # 3 epochs reach about 0.27 on the CPU too: the budget, not AMP
        device="cuda",
        channels_last=True,
        distributed={"nproc_per_node": gpus},
    )
    job.wait()
    started = next(e.started for e in job.events() if e.WhichOneof("kind") == "started")
    assert started.device.startswith("cuda")
    assert started.world_size == gpus
    assert client.evaluate("ddp-cuda", "digits").metrics["accuracy"] > 0.8


def test_ranks_sharing_a_gpu_are_found() -> None:
    assert shared_gpus(["GPU-a", "GPU-b", "GPU-c"]) is None
    assert shared_gpus(["GPU-a", "GPU-b", "GPU-a", "GPU-b"]) == (0, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_nodes_on_one_gpu_fail_clearly_instead_of_in_nccl(
    multi_node: TorchwireServer, tmp_path: Path
) -> None:
    endpoint = f"127.0.0.1:{_free_port()}"
    with Client(multi_node.address, timeout=60) as client:
        job = client.train(
            "one-gpu-two-nodes",
            "digits",
            epochs=2,
            device="cuda",
            distributed={"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": endpoint},
        )
        _join(multi_node, job.id, tmp_path)
        final = job.wait(raise_on_failure=False)
    assert final.state == pb.JOB_STATE_FAILED
    assert "would both train on one GPU" in final.error
