"""The `torchwire` console script, run as a user runs it."""

import dataclasses
import json
import logging
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from torch import nn

from torchwire.client import Client
from torchwire.client.cli import TRAINING_OPTIONS, build_parser, main
from torchwire.client.plot import plot_history
from torchwire.service.config import ServerConfig
from torchwire.service.core.datasets import BUILTIN_DATASETS
from torchwire.service.core.export import EXPORTER_LOGGERS
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
        described = text.rsplit(f"{flag} {field.name.upper()}", 1)[1]  # not the usage line's
        assert not described.lstrip().startswith("(env"), f"{flag} has no description"
    # A description that spans lines is whole, "name:" words in it included.
    assert "algorithms, once per input shape: EXHAUSTIVE" in text


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
    assert (
        "max_batch_size 64, max_delay_ms 2, bucket_sizes none (the server's) (model setting)"
        in changed
    )
    changed = run("batching", digits_model, "--max-delay-ms", "0", *server).stdout  # a zero
    assert "max_delay_ms 0, bucket_sizes none (the server's) (model setting)" in changed
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
    job = client.train("cli-resume", "digits", epochs=20, batch_size=256, patience=0, seed=0)
    job_id = _job_of(client, "cli-resume")
    job.cancel()
    resumed = run("resume", job_id, "--wait", *server)
    assert "succeeded" in resumed.stdout
    assert "metrics: " in resumed.stdout
    bar = resumed.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert "20/20" in bar  # the bar counts every epoch, not only those after the resume
    watched = run("watch", job_id, *server)  # a finished job: its end at once
    assert watched.stdout.splitlines()[0].startswith(f"{job_id}  succeeded")


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Runs the console script's `main` in this process: its exit code, stdout and stderr.
    An exception it lets out fails the test (it would be a traceback for the user)."""
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse's own exit
        code = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_refuses_a_bad_argument_in_one_line(
    client: Client, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Each command, given a bad argument, says in one line on stderr which argument is wrong
    and exits 2, before anything reaches the server."""
    missing = str(tmp_path / "no-such-folder" / "file")
    not_json = tmp_path / "spec.json"
    not_json.write_text("{not json")
    pickled = str(tmp_path / "objects.npy")
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = {
        "train": [
            (("train", "m", "--epochs", "many"), "--epochs"),
            (("train", "m", "--epochs", "99999999999999999999"), "--epochs"),
            (("train", "m", "--label-pattern", "(.*)"), "--label-pattern"),  # no --source
            (("train", "m", "--transforms", '[{"sharpen": {}}]'), "--transforms"),
            (("train", "m", "--transforms", "[{"), "--transforms"),
            (("train", "m", "--transforms", '{"resize": 3}'), "--transforms"),
            (("train", "m", "--eval-transforms", "[1]"), "--eval-transforms"),
            (("train", "m", "--hidden-sizes", "8,x"), "--hidden-sizes"),
            (("train", "m", "--spec", str(not_json)), "--spec"),
        ],
        "jobs": [
            (("jobs", "--state", "asleep"), "--state"),
            (("jobs", "--limit", "9" * 20), "--limit"),
        ],
        "job": [(("job",), "job_id")],
        "watch": [(("watch", "a", "b"), "unrecognized arguments: b")],
        "cancel": [(("cancel",), "job_id")],
        "resume": [(("resume", "--wait"), "job_id")],
        "plot": [
            (("plot", "j", "--out", missing + ".png"), "--out"),
            (("plot", "j", "--out", "curve.xyz"), "curve.xyz"),
            (("plot", "j", "--out", "curve.pgf"), "curve.pgf"),  # needs LaTeX: not offered
        ],
        "evaluate": [(("evaluate", "m", "--version", "latest"), "--version")],
        "predict": [
            (("predict", "m", missing + ".npy"), "file.npy"),
            (("predict", "m", pickled), "objects.npy"),
            (("predict", "m", "x.npy", "--top-k", ""), "--top-k"),
        ],
        "batching": [(("batching", "m", "--max-delay-ms", "soon"), "--max-delay-ms")],
        "export": [
            (("export", "m", "--out", missing), "--out"),
            (("export", "m", "--format", "pickle"), "--format"),
        ],
        "download": [(("download", "m", "--out", missing), "--out"), (("download", "m"), "--out")],
        "delete": [(("delete", "m", "--version", "v1"), "--version")],
        "import": [
            (("import", "m", missing), "file"),
            (("import", "m", str(tmp_path)), str(tmp_path)),  # a folder
            (("import", "m", "f", "--eval-transforms", '{"resize": 1}'), "--eval-transforms"),
        ],
        "models": [
            (("models", "extra"), "extra"),
            (("models", "--tls-ca", str(not_json)), "--tls-ca"),  # not PEM: no gRPC log lines
        ],
        "datasets": [(("datasets", "--tls-cert", "c.pem"), "--tls-cert")],  # without --tls-key
        "upload": [
            (("upload", "d", "--features", missing, "--targets", missing), "file"),
            (("upload", "d", "--features", pickled, "--targets", pickled), "--features"),
        ],
    }
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(cases) | {"serve", "worker"} == set(commands)  # serve and worker: tests above
    for argv, fragment in (case for command in cases.values() for case in command):
        code, out, err = cli(capsys, *argv, "--server", client.address)
        assert code == 2, (argv, err)
        assert out == ""
        assert err.startswith("error: ")
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert fragment in err, (argv, err)


def test_float64_is_converted_with_a_range_check_on_upload_and_predict(
    client: Client, digits_model: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """NumPy's default float64: upload and predict both convert it to float32, and both refuse
    a value that float32 cannot hold, naming it."""
    server = ("--server", client.address)
    x, y = BUILTIN_DATASETS["digits"].load("test")
    np.save(tmp_path / "x64.npy", x[:4].astype(np.float64))
    np.save(tmp_path / "x32.npy", x[:4])
    as64 = json.loads(
        cli(capsys, "predict", digits_model, str(tmp_path / "x64.npy"), "--json", *server)[1]
    )
    as32 = json.loads(
        cli(capsys, "predict", digits_model, str(tmp_path / "x32.npy"), "--json", *server)[1]
    )
    assert as64 == as32

    np.save(tmp_path / "t.npy", y)
    np.save(tmp_path / "f64.npy", x.astype(np.float64))
    upload = ("upload", "cli-float64", "--targets", str(tmp_path / "t.npy"), *server)
    code, out, _ = cli(capsys, *upload, "--features", str(tmp_path / "f64.npy"))
    assert code == 0
    assert "360 samples" in out
    (dataset,) = [d for d in client.datasets() if d.name == "cli-float64"]
    assert dataset.feature_dtype == "float32"

    huge = x.astype(np.float64)
    huge[3, 0, 2, 5] = 1e39
    np.save(tmp_path / "huge.npy", huge)
    code, _, err = cli(capsys, *upload, "--features", str(tmp_path / "huge.npy"))
    assert code == 1
    assert "INVALID_ARGUMENT: chunk[0].features=1e+39: is beyond float32's range" in err
    edge = x[:4].astype(np.float64)
    edge[0, 0, 0, 0] = float(np.finfo(np.float32).max)  # float32's own largest value fits
    np.save(tmp_path / "edge.npy", edge)
    assert cli(capsys, "predict", digits_model, str(tmp_path / "edge.npy"), *server)[0] == 0
    np.save(tmp_path / "huge-batch.npy", huge[:4])
    code, _, err = cli(capsys, "predict", digits_model, str(tmp_path / "huge-batch.npy"), *server)
    assert code == 1
    assert "INVALID_ARGUMENT: inputs.data=1e+39: is beyond float32's range" in err


def test_export_download_and_delete(
    client: Client, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """`export --out` into a missing folder fails before the server exports; `download` gets a
    stored export again; `delete` removes a version, then the model."""
    server = ("--server", client.address)
    for _ in range(2):
        client.train("cli-files", "digits", epochs=1, batch_size=256, seed=0).wait()
    code, _, err = cli(
        capsys, "export", "cli-files", "--out", str(tmp_path / "no" / "m.onnx"), *server
    )
    assert code == 2
    assert "the folder" in err
    assert "onnxruntime" not in client.model("cli-files").versions[-1].runtimes  # not exported

    with caplog.at_level(logging.INFO):  # the server runs in this process: its log is here
        assert (
            cli(capsys, "export", "cli-files", "--out", str(tmp_path / "m.onnx"), *server)[0] == 0
        )
    exporter = [r for r in caplog.records if r.name.startswith(EXPORTER_LOGGERS)]
    assert exporter == []  # the exporter's INFO chatter stays out of the server's log
    code, out, _ = cli(
        capsys, "download", "cli-files", "--out", str(tmp_path / "again.onnx"), *server
    )
    assert code == 0
    assert out.startswith(f"wrote {tmp_path / 'again.onnx'}: ")
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    code, _, err = cli(
        capsys,
        "download",
        "cli-files",
        "--format",
        "torchscript",
        "--out",
        str(tmp_path / "m.pt"),
        *server,
    )
    assert code == 1
    assert "NOT_FOUND" in err
    assert not (tmp_path / "m.pt").exists()

    assert (
        cli(capsys, "delete", "cli-files", "--version", "1", *server)[1] == "deleted cli-files v1\n"
    )
    code, out, _ = cli(capsys, "delete", "cli-files", "--json", *server)
    assert json.loads(out) == {"model_name": "cli-files", "deleted_versions": [2]}
    code, _, err = cli(capsys, "delete", "cli-files", *server)
    assert code == 1
    assert "NOT_FOUND" in err
    code, _, err = cli(
        capsys, "download", "cli-files", "--out", str(tmp_path / "gone.onnx"), *server
    )
    assert code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx", "m.onnx"]  # no .part
    code, _, err = cli(capsys, "watch", "no-such-job", *server)
    assert (code, err) == (1, "error: NOT_FOUND: job 'no-such-job' does not exist\n")  # no bar


def test_training_options_have_flags(
    client: Client, colours: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    """Every TrainingConfig field, a file source's label pattern and the transforms can be set
    without a --spec; a file-source job shows its source instead of an empty dataset."""
    assert set(TRAINING_OPTIONS) == {f.name for f in pb.TrainingConfig.DESCRIPTOR.fields}
    code, out, err = cli(
        capsys,
        "train",
        "cli-flags",
        "--source",
        f"image_files:{colours['train']}",
        "--label-pattern",
        "^([a-z]+)_",
        "--transforms",
        '[{"resize": {"size": [8, 8]}}]',
        "--weight-decay",
        "0.01",
        "--min-delta",
        "0.001",
        "--no-shuffle",
        "--epochs",
        "1",
        "--json",
        "--server",
        client.address,
    )
    assert code == 0, err
    request = client.job(json.loads(out)["id"]).wait().request
    assert request.dataset.source.label_pattern == "^([a-z]+)_"
    assert request.transforms[0].resize.size == [8, 8]
    assert request.config.weight_decay == 0.01
    assert request.config.min_delta == 0.001
    assert request.config.shuffle is False
    code, out, _ = cli(capsys, "jobs", "--model", "cli-flags", "--server", client.address)
    assert f"source=image_files:{colours['train']}" in out
    assert "dataset=" not in out


def test_plot_without_a_finished_epoch_and_with_integer_epochs(
    client: Client, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    server = ("--server", client.address)
    job = client.train("cli-unplotted", "digits", epochs=5)
    job.cancel()  # long before its first epoch ends: jobs take a second or more to start
    code, _, err = cli(capsys, "plot", job.id, "--out", str(tmp_path / "c.png"), *server)
    assert code == 2
    assert err == "error: the job has no finished epoch yet: there is no curve to draw\n"

    # Three epochs: matplotlib's own ticks would be 1.00, 1.25 ... 3.00.
    done = client.train("cli-plotted", "digits", epochs=3, batch_size=256, patience=0).wait()
    svg = tmp_path / "curve.svg"
    assert cli(capsys, "plot", done.id, "--out", str(svg), *server)[0] == 0
    labels = re.findall(r"<!-- (.*?) -->", svg.read_text())
    assert labels[: labels.index("epoch")] == ["1", "2", "3"]  # the loss panel's epoch axis


def test_a_long_falling_loss_gets_a_log_axis_without_markers(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "train_accuracy": 0.9}
        for e in range(1, 201)
    ]
    svg = plot_history(history, tmp_path / "long.svg").read_text()
    labels = re.findall(r"<!-- (.*?) -->", svg)
    assert "$\\mathdefault{10^{-1}}$" in labels  # the loss axis is logarithmic
    # Symbols drawn (<use> of a marker): the axes' ticks, not one per epoch and curve.
    assert len(re.findall(r'<use xlink:href="#m', svg)) < len(history)
