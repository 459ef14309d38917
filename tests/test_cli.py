"""The `torchwire` console script, run as a user runs it."""

import dataclasses
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from torch import nn

from torchwire.client import Client
from torchwire.service.config import ServerConfig
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.v1 import torchwire_pb2 as pb

TORCHWIRE = str(Path(sys.executable).with_name("torchwire"))


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TORCHWIRE, *args], capture_output=True, text=True, check=check, timeout=120
    )


def test_serve_answers_health_and_reflection_then_exits_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [TORCHWIRE, "serve", "--address", "127.0.0.1:0", "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("torchwire serving on 127.0.0.1:")
        address = line.split()[-1]
        with grpc.insecure_channel(address) as channel:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=10)
                .status
            )
            assert status == health_pb2.HealthCheckResponse.SERVING
            database = ProtoReflectionDescriptorDatabase(channel)
            service = database.FindFileContainingSymbol("torchwire.v1.TorchWire").service[0]
            assert {"Train", "WatchJob", "Evaluate", "Predict"} <= {m.name for m in service.method}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert (tmp_path / "store" / "registry.sqlite3").exists()


def test_serve_prints_the_ports_it_chose(tmp_path: Path) -> None:
    """With port 0, the metrics and REST ports are printed after the gRPC one."""
    process = subprocess.Popen(
        [TORCHWIRE, "serve", "--address", "127.0.0.1:0", "--store", str(tmp_path / "store")]
        + ["--metrics-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().startswith("torchwire serving on 127.0.0.1:")
        metrics = process.stdout.readline().split()[-1]
        rest = process.stdout.readline().split()[-1]
        assert metrics.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(metrics, timeout=10) as response:
            assert b"torchwire_grpc_requests" in response.read()
        with urllib.request.urlopen(f"{rest}/health/live", timeout=10) as response:
            assert json.loads(response.read()) == {"live": True}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_serve_help_says_what_every_flag_does() -> None:
    text = " ".join(run("serve", "--help").stdout.split())
    assert "--ort-intra-op-threads ORT_INTRA_OP_THREADS ONNX Runtime intra-op threads" in text
    assert "--tls-key TLS_KEY PEM files of the server's certificate chain and key" in text
    for field in dataclasses.fields(ServerConfig):
        flag = "--" + field.name.replace("_", "-")
        described = text.split(f"{flag} {field.name.upper()}", 1)[1]
        assert not described.lstrip().startswith("(env"), f"{flag} has no description"


def test_serve_rejects_bad_configuration(tmp_path: Path) -> None:
    result = run("serve", "--max-concurrent-jobs", "0", "--store", str(tmp_path), check=False)
    assert result.returncode == 2
    assert "max_concurrent_jobs=0" in result.stderr


def test_client_commands(client: Client, digits_model: str, tmp_path: Path) -> None:
    server = ["--server", client.address]
    models = json.loads(run("models", "--json", *server).stdout)
    assert digits_model in {m["name"] for m in models}

    x, y = BUILTIN_DATASETS["digits"].load("test")
    inputs = tmp_path / "batch.npy"
    np.save(inputs, x[:5])
    predicted = json.loads(
        run("predict", digits_model, str(inputs), "--top-k", "2", "--json", *server).stdout
    )
    assert np.array(predicted["top_indices"]).shape == (5, 2)
    text = run("predict", digits_model, str(inputs), *server).stdout
    assert text.splitlines()[0].startswith("0: ")

    evaluated = run("evaluate", digits_model, *server).stdout
    assert "accuracy=" in evaluated
    assert "class        9" in evaluated

    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "t.npy", y)
    assert (
        "360 samples"
        in run(
            "upload",
            "cli-data",
            "--features",
            str(tmp_path / "f.npy"),
            "--targets",
            str(tmp_path / "t.npy"),
            *server,
        ).stdout
    )
    assert "cli-data" in run("datasets", *server).stdout

    trained = run("train", "cli-model", "--dataset", "cli-data", "--epochs", "2", "--wait", *server)
    assert "succeeded" in trained.stdout
    assert "cli-model -> v1" in trained.stdout
    job_id = trained.stdout.split()[0]
    assert "epoch   2" in run("job", job_id, *server).stdout
    assert job_id in run("jobs", "--model", "cli-model", *server).stdout

    failed = run("job", "nope", *server, check=False)
    assert failed.returncode == 1
    assert "NOT_FOUND" in failed.stderr


def test_import_command(client: Client, tmp_path: Path) -> None:
    server = ["--server", client.address]
    path = tmp_path / "linear.pt"
    torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(4, 3))).save(str(path))
    imported = run(
        "import",
        "cli-import",
        str(path),
        "--format",
        "torchscript",
        "--input-shape",
        "2,2",
        "--classes",
        "a",
        "b",
        "c",
        *server,
    )
    assert imported.stdout.startswith("cli-import v1  classification  input float32[2, 2]")
    assert "imported linear.pt  runtimes torchscript" in imported.stdout
    assert "100%" in imported.stderr  # the progress bar
    assert "imported linear.pt" in run("models", *server).stdout

    refused = run("import", "cli-import", str(path), *server, check=False)
    assert refused.returncode == 2  # a local mistake
    assert refused.stderr.startswith("error: ")
    assert "give the format" in refused.stderr
    refused = run(
        "import", "cli-import", str(path), "--format", "torchscript", *server, check=False
    )
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT: input_shape=[]" in refused.stderr


def test_json_is_plain_json(client: Client, digits_model: str) -> None:
    """64-bit integers are numbers, zero values are there, the confusion matrix is an array."""
    server = ["--server", client.address]
    evaluated = json.loads(run("evaluate", digits_model, "--json", *server).stdout)
    assert evaluated["num_samples"] == 360
    matrix = np.array(evaluated["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert matrix.sum() == 360
    batching = json.loads(run("batching", digits_model, "--json", *server).stdout)
    assert batching["max_delay_ms"] == 0  # a zero value, present
    assert isinstance(batching["max_batch_size"], int)


def test_batching_without_flags_only_shows(client: Client, digits_model: str) -> None:
    server = ["--server", client.address]
    shown = run("batching", digits_model, *server).stdout
    assert "(server default)" in shown
    assert client.model(digits_model).batching.server_default  # nothing was written
    changed = run("batching", digits_model, "--max-delay-ms", "2", *server).stdout
    assert "max_batch_size 64, max_delay_ms 2 (model setting)" in changed
    assert "(server default)" in run("batching", digits_model, "--reset", *server).stdout


def test_local_mistakes_are_one_line_with_exit_code_2(
    client: Client, digits_model: str, tmp_path: Path
) -> None:
    server = ["--server", client.address]
    spec = tmp_path / "spec.json"
    spec.write_text('{"transforms": [{"sharpen": {}}]}')
    for args, fragment in [
        (("predict", digits_model, str(tmp_path / "missing.npy")), "missing.npy"),
        (("train", "m", "--spec", str(tmp_path / "missing.json")), "missing.json"),
        (("train", "m", "--spec", str(spec)), "sharpen"),
    ]:
        result = run(*args, *server, check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ")
        assert fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_output_into_a_closed_pipe_is_not_an_error(
    client: Client, digits_model: str, tmp_path: Path
) -> None:
    """`| head` closes the pipe long before the ~200 KB of JSON are written."""
    inputs = tmp_path / "all.npy"
    np.save(inputs, BUILTIN_DATASETS["digits"].load("test")[0])
    result = subprocess.run(
        f"{TORCHWIRE} predict {digits_model} {inputs} --json --server {client.address} | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout == "{"
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr


def _job_of(client: Client, model: str) -> str:
    """The id of the model's unfinished job, once it has finished an epoch."""
    deadline = time.monotonic() + 60
    unfinished = ("queued", "running")
    while not (jobs := [j for j in client.jobs(model_name=model) if _state(j) in unfinished]):
        assert time.monotonic() < deadline, f"no job of {model}"  # the CLI is submitting it
        time.sleep(0.05)
    for event in client.job(jobs[0].id).events():  # blocks until the first epoch ends
        if event.WhichOneof("kind") == "epoch_end":
            break
    return jobs[0].id


def _state(job) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


def test_train_wait_on_a_cancelled_job_fails_without_older_metrics(
    client: Client, digits_model: str
) -> None:
    """The model has a version from an earlier job: a cancelled job must not print its
    metrics as if they were this job's, nor exit 0."""
    server = ["--server", client.address]
    waiting = subprocess.Popen(
        [TORCHWIRE, "train", digits_model, "--epochs", "5000", "--wait", *server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job_id = _job_of(client, digits_model)
    client.job(job_id).cancel()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 1
    assert f"error: job {job_id} cancelled" in err
    assert "metrics:" not in out
    # A new model cancelled before its first version: the job's error, not NOT_FOUND.
    waiting = subprocess.Popen(
        [TORCHWIRE, "train", "cli-new", "--epochs", "5000", "--wait", *server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client.job(_job_of(client, "cli-new")).cancel()
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 1
    assert "cancelled" in err
    assert "NOT_FOUND" not in err


def test_resume_and_watch_follow_a_job_to_its_last_epoch(client: Client) -> None:
    server = ["--server", client.address]
    job = client.train("cli-resume", "digits", epochs=60, patience=0, seed=0)
    job_id = _job_of(client, "cli-resume")
    job.cancel()
    resumed = run("resume", job_id, "--wait", *server)
    assert "succeeded" in resumed.stdout
    assert "metrics: " in resumed.stdout
    bar = resumed.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert "60/60" in bar  # the bar counts every epoch, not only those after the resume
    watched = run("watch", job_id, *server)  # a finished job: its end at once
    assert watched.stdout.splitlines()[0].startswith(f"{job_id}  succeeded")
