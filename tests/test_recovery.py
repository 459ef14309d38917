"""Crash recovery with a real server process: kill -9 in the middle of training, restart,
find everything consistent, and resume the job to completion."""

import os
import signal
import sqlite3
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from tests.conftest import assert_rejected
from torchwire.client import Client
from torchwire.client.demo import start_server
from torchwire.service.core.architectures import MLPParams
from torchwire.service.core.checkpoint import load_checkpoint
from torchwire.service.core.datasets import BUILTIN_DATASETS, DatasetLocation
from torchwire.service.core.pipeline import prepare
from torchwire.service.core.spec import TrainConfig, TrainSpec
from torchwire.service.core.training import Trainer
from torchwire.v1 import torchwire_pb2 as pb

X_TEST, Y_TEST = BUILTIN_DATASETS["digits"].load("test")


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren, ...: the forkserver, the resource tracker, the workers."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            status = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if status == "Z":  # a zombie has exited; only its parent's reaping is left
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (ns)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_kill_9_mid_training_loses_nothing_and_the_job_resumes(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    server, address = start_server(store)
    try:
        with Client(address) as client:
            client.train("kept", "digits", epochs=4, seed=0).wait()
            job = client.train("crashed", "digits", epochs=4, batch_size=8, patience=0, seed=0)
            for event in job.events():
                if event.WhichOneof("kind") == "epoch_end" and event.epoch_end.metrics.epoch == 2:
                    break
            workers = _descendants(server.pid)
            assert len(workers) >= 2  # at least the forkserver and the job's worker
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
            written = _files(Path(store) / "jobs" / job.id)
    finally:
        if server.poll() is None:
            server.kill()
    # The workers notice that their server is gone and exit: no orphan writes checkpoints,
    # not even the epoch it was in (the forkserver, its parent, outlives the server).
    assert all(_gone(pid) for pid in workers)
    assert _files(Path(store) / "jobs" / job.id) == written
    # A server that dies between an epoch's checkpoint and its event leaves the epoch
    # unlogged: forget the last logged one, as such a crash would have.
    with sqlite3.connect(Path(store) / "registry.sqlite3") as db:
        db.execute(
            "DELETE FROM events WHERE job_id = ? AND seq = (SELECT MAX(seq) FROM events "
            "WHERE job_id = ? AND kind = 'epoch_end')",
            (job.id, job.id),
        )

    # Nothing is corrupt: the registry passes SQLite's check, every checkpoint loads safely.
    with sqlite3.connect(Path(store) / "registry.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for checkpoint in Path(store).rglob("*.pt"):
        assert "model" in load_checkpoint(checkpoint)

    server, address = start_server(store)
    try:
        with Client(address) as client:
            # The finished model is still there and answers.
            kept = client.predict("kept", X_TEST, outputs=["top_k"])
            assert (kept.top_indices[:, 0] == Y_TEST).mean() > 0.8
            # The job shows as interrupted, with its last good checkpoint.
            handle = client.job(job.id)
            info = handle.info()
            assert info.state == pb.JOB_STATE_INTERRUPTED
            last = list(handle.events())[-1]
            assert last.interrupted.reason == "the server stopped while the job was running"
            checkpoint_epoch = last.interrupted.checkpoint_epoch
            assert 2 <= checkpoint_epoch < 4
            # ... and it resumes to completion.
            handle.resume()
            final = handle.wait()
            assert final.state == pb.JOB_STATE_SUCCEEDED
            started = [e.started for e in handle.events() if e.WhichOneof("kind") == "started"]
            assert [s.start_epoch for s in started] == [1, checkpoint_epoch + 1]
            version = client.model("crashed").versions[-1]
            assert [m.epoch for m in version.history] == list(range(1, 5))
            # The job's own curve has no hole: the forgotten epoch came back from last.pt.
            assert [m.epoch for m in handle.info().history] == list(range(1, 5))
            assert version.metrics["accuracy"] > 0.9
            assert client.predict("crashed", X_TEST[:4]).raw.shape == (4, 10)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0


def test_resume_job_rejects(client: Client, digits_model: str) -> None:
    finished = client.jobs(state="succeeded", model_name=digits_model)[0]
    cases = [
        (
            lambda: client.stub.ResumeJob(pb.ResumeJobRequest(job_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "'nope'",
        ),
        (
            lambda: client.stub.ResumeJob(pb.ResumeJobRequest(job_id="")),
            grpc.StatusCode.NOT_FOUND,
            "''",
        ),
        (
            lambda: client.stub.ResumeJob(pb.ResumeJobRequest(job_id=finished.id)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "succeeded",
        ),
    ]
    for call, code, fragment in cases:
        assert_rejected(call, code, fragment)


def test_resume_continues_the_curve_and_the_optimizer(tmp_path: Path) -> None:
    pipeline = prepare(DatasetLocation(BUILTIN_DATASETS["digits"].info, "train", None))

    def trainer(epochs: int, resume: Path | None = None) -> Trainer:
        spec = TrainSpec(
            "m",
            "digits",
            "train",
            "mlp",
            MLPParams(),
            TrainConfig(epochs=epochs, patience=0, seed=1),
        )
        return Trainer(
            spec,
            pipeline,
            tmp_path,
            lambda e: None,
            resume_from=resume,
        )

    first = trainer(2).run()
    resumed = trainer(4, tmp_path / "last.pt").run()
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 4
    steps = next(iter(state["optimizer"]["state"].values()))["step"]
    assert int(steps) == 4 * 21  # Adam's step count went on from where it stopped
    assert resumed.best_epoch >= 1
    assert torch.isfinite(torch.tensor([r.train_loss for r in resumed.history])).all()
    assert np.isclose(state["history"][1]["train_loss"], first.history[1].train_loss)


def test_corrupt_files_are_refused_on_load(tmp_path: Path) -> None:
    from tests.conftest import start_server

    server = start_server(tmp_path)
    try:
        with Client(server.address) as client:
            x, y = BUILTIN_DATASETS["digits"].load("test")
            client.upload_dataset("held", x, y, split="train")
            client.upload_dataset("held", x, y, split="test")
            client.train("victim", "digits", epochs=1).wait()
            # Flip one byte of the registered checkpoint and of the uploaded features.
            for path in (
                tmp_path / "models/victim/1/model.pt",
                tmp_path / "datasets/held/test/features.bin",
            ):
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
            precondition = grpc.StatusCode.FAILED_PRECONDITION
            assert_rejected(
                lambda: client.predict("victim", x[:2]), precondition, "'victim' v1", "corrupt"
            )
            assert_rejected(lambda: client.export("victim", "onnx"), precondition, "corrupt")
            client.train("healthy", "digits", epochs=1).wait()
            assert_rejected(
                lambda: client.evaluate("healthy", "held"),
                precondition,
                "dataset 'held' split 'test'",
                "upload it again",
            )
            assert client.evaluate("healthy", "held", split="train").num_samples == len(x)
            job = client.train("on-corrupt", "held", split="test", epochs=1)
            failed = job.wait(raise_on_failure=False)
            assert failed.state == pb.JOB_STATE_FAILED
            assert "corrupt" in failed.error
    finally:
        server.stop(grace=1)


def test_sigterm_with_a_running_job_exits_0_and_keeps_the_job_resumable(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    server, address = start_server(store, "--grace-seconds", "5")
    try:
        with Client(address) as client:
            job = client.train("long", "digits", epochs=10_000, patience=0, batch_size=8)
            for event in job.events():
                if event.WhichOneof("kind") == "epoch_end":
                    break
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    server, address = start_server(store)
    try:
        with Client(address) as client:
            info = client.job(job.id).info()
            assert info.state == pb.JOB_STATE_INTERRUPTED
            assert info.error == "server shutdown"
            assert list(client.job(job.id).events())[-1].interrupted.checkpoint_epoch >= 1
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0


def test_concurrent_resumes_queue_the_job_once(client: Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    job = client.train("resumed-twice", "digits", epochs=10_000, patience=0, batch_size=8)
    for event in job.events():
        if event.WhichOneof("kind") == "started":
            break
    job.cancel()
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: _resume_code(client, job.id), range(8)))
    assert outcomes.count(grpc.StatusCode.OK) == 1
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
    job.cancel()


def _resume_code(client: Client, job_id: str) -> grpc.StatusCode:
    try:
        client.stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id))
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK
