"""The `torchwire` command line: `serve`, and client commands that talk to a running server."""

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from torchwire.client.client import DEFAULT_ADDRESS, Client, JobError
from torchwire.client.messages import history_rows
from torchwire.client.plot import plot_history
from torchwire.v1 import torchwire_pb2 as pb

SERVER_ENV = "TORCHWIRE_SERVER"


def _dump(value: Any) -> str:
    def plain(item: Any) -> Any:
        if isinstance(item, Message):
            return json_format.MessageToDict(item, preserving_proto_field_name=True)
        if isinstance(item, np.ndarray):
            return item.tolist()
        if isinstance(item, list):
            return [plain(i) for i in item]
        if isinstance(item, dict):
            return {k: plain(v) for k, v in item.items()}
        return item

    return json.dumps(plain(value), indent=2)


def _state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


def _job_line(job: pb.Job) -> str:
    version = f" -> v{job.model_version}" if job.model_version else ""
    error = f"  ({job.error})" if job.error else ""
    return (
        f"{job.id}  {_state(job):<9}  {job.request.model_name}{version}  "
        f"dataset={job.request.dataset.name}{error}"
    )


def _source(text: str | None) -> dict[str, str] | None:
    """`FORMAT:PATH` as a DataSource dict, e.g. image_folder:pets/train."""
    if text is None:
        return None
    fmt, _, path = text.partition(":")
    return {"format": fmt, "path": path}


def _train_request(args: argparse.Namespace) -> pb.TrainRequest:
    """The request of `--spec` (a TrainRequest in JSON), or an MLP on digits, with the
    flags given on the command line laid over it."""
    request = pb.TrainRequest(model=pb.ModelSpec(mlp=pb.MLPSpec()))
    if args.spec:
        json_format.Parse(Path(args.spec).read_text(), request)
    request.model_name = args.model
    if args.source:
        request.dataset.CopyFrom(pb.DatasetRef(split=args.split, source=_source(args.source)))
    elif args.dataset or not request.dataset.ByteSize():
        request.dataset.CopyFrom(pb.DatasetRef(name=args.dataset or "digits", split=args.split))
    elif args.split:
        request.dataset.split = args.split
    if args.arch and request.model.WhichOneof("architecture") != args.arch:
        request.model.CopyFrom(pb.ModelSpec(**{args.arch: {}}))
    if args.torchvision:
        request.model.CopyFrom(pb.ModelSpec(torchvision=pb.TorchvisionSpec(name=args.torchvision)))
    architecture = request.model.WhichOneof("architecture")
    if args.hidden_sizes and architecture == "mlp":
        request.model.mlp.hidden_sizes[:] = args.hidden_sizes
    if args.channels and architecture == "cnn":
        request.model.cnn.channels[:] = args.channels
    if args.dropout is not None and architecture in ("mlp", "cnn"):
        getattr(request.model, architecture).dropout = args.dropout
    for key in _CONFIG_FLAGS:
        if getattr(args, key) is not None:
            setattr(request.config, key, getattr(args, key))
    if args.tensorboard:
        request.config.tensorboard = True
    if args.init_from:
        request.init_from.CopyFrom(args.init_from)
    return request


_CONFIG_FLAGS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "optimizer",
    "loss",
    "scheduler",
    "monitor",
    "val_fraction",
    "patience",
    "seed",
    "device",
)


def cmd_train(client: Client, args: argparse.Namespace) -> Any:
    job = client.submit(_train_request(args))
    if not args.wait:
        return job.info() if args.json else f"submitted job {job.id}"
    final = job.wait(progress=not args.json, raise_on_failure=False)
    if args.json:
        return final
    return f"{_job_line(final)}\nmetrics: " + ", ".join(
        f"{k}={v:.4f}"
        for k, v in sorted(client.model(final.request.model_name).versions[-1].metrics.items())
    )


def cmd_jobs(client: Client, args: argparse.Namespace) -> Any:
    jobs = client.jobs(state=args.state or "", model_name=args.model or "", limit=args.limit)
    return jobs if args.json else "\n".join(_job_line(j) for j in jobs) or "no jobs"


def cmd_job(client: Client, args: argparse.Namespace) -> Any:
    job = client.job(args.job_id).info()
    if args.json:
        return job
    lines = [_job_line(job)]
    for m in job.history:
        val = f"  val_loss {m.val_loss:.4f}" if m.HasField("val_loss") else ""
        metrics = "".join(f"  val_{k} {v:.4f}" for k, v in m.val_metrics.items())
        lines.append(f"  epoch {m.epoch:>3}  loss {m.train_loss:.4f}{val}{metrics}")
    return "\n".join(lines)


def cmd_cancel(client: Client, args: argparse.Namespace) -> Any:
    job = client.job(args.job_id).cancel()
    return job if args.json else _job_line(job)


def cmd_resume(client: Client, args: argparse.Namespace) -> Any:
    job = client.job(args.job_id)
    job.resume()
    final = job.wait(progress=not args.json, raise_on_failure=False) if args.wait else job.info()
    return final if args.json else _job_line(final)


def cmd_evaluate(client: Client, args: argparse.Namespace) -> Any:
    dataset = None if args.source else args.dataset
    result = client.evaluate(
        args.model,
        dataset,
        split=args.split,
        source=_source(args.source),
        version=args.version,
    )
    if args.json:
        return result
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
    lines = [
        f"{result.model_name} v{result.version} on {args.source or args.dataset}: "
        f"{result.num_samples} "
        f"samples, loss={result.loss:.4f}, {metrics}"
    ]
    lines += [
        f"  class {c.name:>8}: precision {c.precision:.3f}  recall {c.recall:.3f}  "
        f"support {c.support}"
        for c in result.per_class
    ]
    return "\n".join(lines)


def cmd_predict(client: Client, args: argparse.Namespace) -> Any:
    options = {"version": args.version, "top_k": args.top_k, "runtime": args.runtime}
    if len(args.inputs) == 1 and args.inputs[0].endswith(".npy"):
        result = client.predict(args.model, np.load(args.inputs[0], allow_pickle=False), **options)
    else:
        images = [Path(path).read_bytes() for path in args.inputs]
        result = client.predict(args.model, images=images, **options)
    if args.json:
        return {k: v for k, v in vars(result).items() if v is not None}
    if result.top_labels is None:
        return "\n".join(f"{i}: {row.tolist()}" for i, row in enumerate(result.raw))
    return "\n".join(
        f"{i}: " + ", ".join(f"{label} ({p:.3f})" for label, p in zip(labels, probs, strict=True))
        for i, (labels, probs) in enumerate(
            zip(result.top_labels, result.top_probabilities, strict=True)
        )
    )


def cmd_worker(client: Client, args: argparse.Namespace) -> Any:
    from torchwire.service.node import join  # the server side: torch, loaded only here

    job = client.job(args.job_id).info()
    roots = tuple(Path(p) for p in args.data_roots.split(",") if p)
    try:
        join(job.id, job.request, Path(args.store_dir), roots, args.allow_download)
    except Exception as err:  # the service's errors carry a message for a person
        raise SystemExit(f"error: {getattr(err, 'message', err)}") from err
    return {"job": job.id} if args.json else f"job {job.id}: this machine's processes finished"


def cmd_plot(client: Client, args: argparse.Namespace) -> Any:
    job = client.job(args.job_id).info()
    rows = history_rows(job.history)
    title = f"{job.request.model_name} (job {job.id})"
    path = plot_history(rows, args.out, title, job.best_epoch)
    return {"path": str(path), "epochs": len(rows)} if args.json else f"wrote {path}"


def cmd_export(client: Client, args: argparse.Namespace) -> Any:
    artifact = client.export(
        args.model, args.format, args.out, version=args.version, opset=args.opset
    )
    if args.json:
        return artifact
    return (
        f"wrote {args.out}: {artifact.size_bytes} bytes, sha256 {artifact.sha256}, "
        f"max abs diff from eager {artifact.max_abs_diff:.2g}"
    )


def cmd_batching(client: Client, args: argparse.Namespace) -> Any:
    config = client.configure_batching(
        args.model,
        enabled=not args.off,
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        reset=args.reset,
    )
    if args.json:
        return config
    source = "server default" if config.server_default else "model setting"
    state = "on" if config.enabled else "off"
    return (
        f"{args.model}: batching {state}, max_batch_size {config.max_batch_size}, "
        f"max_delay_ms {config.max_delay_ms:g} ({source})"
    )


def cmd_models(client: Client, args: argparse.Namespace) -> Any:
    models = client.models()
    if args.json:
        return models
    lines = []
    for model in models:
        for v in model.versions:
            metrics = ", ".join(f"{k}={x:.4f}" for k, x in sorted(v.metrics.items()))
            lines.append(
                f"{model.name} v{v.version}  {v.task}  input {v.input_dtype}"
                f"{list(v.input_shape)}  {metrics}"
            )
    return "\n".join(lines) or "no models"


def cmd_datasets(client: Client, args: argparse.Namespace) -> Any:
    datasets = client.datasets()
    if args.json:
        return datasets
    return "\n".join(
        f"{d.name}{' (built-in)' if d.builtin else ''}  {d.task}  features {d.feature_dtype}"
        f"{list(d.feature_shape)}  " + ", ".join(f"{s.split}={s.num_samples}" for s in d.splits)
        for d in datasets
    )


def cmd_upload(client: Client, args: argparse.Namespace) -> Any:
    features = np.load(args.features, allow_pickle=False)
    targets = np.load(args.targets, allow_pickle=False)
    dataset = client.upload_dataset(
        args.name, features, targets, split=args.split, classes=args.classes or ()
    )
    return dataset if args.json else f"uploaded {args.name}/{args.split}: {len(features)} samples"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _model_ref(text: str) -> pb.ModelRef:
    """MODEL or MODEL:VERSION."""
    name, _, version = text.partition(":")
    if version and not version.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: the version after ':' must be a number")
    return pb.ModelRef(name=name, version=int(version or 0))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchwire", description="Train, evaluate and serve PyTorch models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve", add_help=False, help="run the server (see `torchwire serve --help`)"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV, DEFAULT_ADDRESS),
        help=f"host:port of the server (env {SERVER_ENV})",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--token",
        default=os.environ.get("TORCHWIRE_TOKEN"),
        help="bearer token (env TORCHWIRE_TOKEN)",
    )
    for name in ("ca", "cert", "key"):
        env = f"TORCHWIRE_TLS_{name.upper()}"
        common.add_argument(
            f"--tls-{name}",
            default=os.environ.get(env),
            help=f"TLS: PEM file of the {name} (env {env})",
        )

    def command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text)
        sub.set_defaults(handler=handler)
        return sub

    train = command("train", cmd_train, "submit a training job")
    train.add_argument("model", help="model name to register a new version of")
    train.add_argument(
        "--spec", help="a TrainRequest in JSON (transforms, model, config...); flags override it"
    )
    train.add_argument("--dataset", help="a named dataset (default digits)")
    train.add_argument("--source", help="FORMAT:PATH under a data root, e.g. image_folder:pets")
    train.add_argument("--split", default="")
    train.add_argument("--arch", choices=("mlp", "cnn"))
    train.add_argument("--torchvision", help="a torchvision architecture, e.g. resnet18")
    train.add_argument("--hidden-sizes", type=_ints, default=[], help="e.g. 128,64")
    train.add_argument("--channels", type=_ints, default=[], help="e.g. 32,64")
    train.add_argument("--dropout", type=float)
    train.add_argument("--init-from", type=_model_ref, help="MODEL[:VERSION] to fine-tune from")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", "--lr", type=float)
    train.add_argument("--optimizer", choices=("adam", "adamw", "sgd", "rmsprop"))
    train.add_argument("--loss", choices=("cross_entropy", "nll", "bce_with_logits", "mse", "l1"))
    train.add_argument("--scheduler", choices=("constant", "step", "cosine", "one_cycle"))
    train.add_argument("--monitor", help="val_loss (default), val_accuracy or val_mae")
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--patience", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    train.add_argument(
        "--tensorboard",
        action="store_true",
        help="write TensorBoard event files under the job's directory",
    )
    train.add_argument("--wait", action="store_true", help="follow the job with a progress bar")

    jobs = command("jobs", cmd_jobs, "list jobs")
    jobs.add_argument(
        "--state",
        choices=("queued", "running", "succeeded", "failed", "cancelled", "interrupted"),
    )
    jobs.add_argument("--model")
    jobs.add_argument("--limit", type=int, default=0)
    command("job", cmd_job, "show a job and its learning curves").add_argument("job_id")
    command("cancel", cmd_cancel, "cancel a job").add_argument("job_id")
    resume = command("resume", cmd_resume, "continue a job from its last checkpoint")
    resume.add_argument("job_id")
    resume.add_argument("--wait", action="store_true", help="follow it with a progress bar")

    evaluate = command("evaluate", cmd_evaluate, "evaluate a model on a dataset")
    evaluate.add_argument("model")
    evaluate.add_argument("--dataset", default="digits")
    evaluate.add_argument("--source", help="FORMAT:PATH under a data root, e.g. csv:test.csv")
    evaluate.add_argument("--split", default="")
    evaluate.add_argument("--version", type=int, default=0)

    predict = command("predict", cmd_predict, "predict a .npy batch, or PNG/JPEG images")
    predict.add_argument("model")
    predict.add_argument(
        "inputs", nargs="+", help="one .npy file of shape [n, *input_shape], or image files"
    )
    predict.add_argument("--version", type=int, default=0)
    predict.add_argument("--top-k", type=int, default=1)
    predict.add_argument(
        "--runtime",
        choices=("eager", "torchscript", "onnxruntime"),
        default="",
        help="default: the fastest one exported",
    )

    worker = command("worker", cmd_worker, "join a distributed job of the server from this machine")
    worker.add_argument("job_id")
    worker.add_argument("--store-dir", default="store", help="this machine's store (datasets)")
    worker.add_argument(
        "--data-roots", default="", help="this machine's data roots, comma-separated"
    )
    worker.add_argument("--allow-download", action="store_true")

    plot = command("plot", cmd_plot, "draw a job's learning curves with matplotlib")
    plot.add_argument("job_id")
    plot.add_argument("--out", required=True, help="image file to write, e.g. curve.png")

    export = command("export", cmd_export, "export a model to ONNX or TorchScript and download it")
    export.add_argument("model")
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    export.add_argument("--out", required=True, help="where to write the file")
    export.add_argument("--version", type=int, default=0)
    export.add_argument("--opset", type=int, default=0, help="ONNX opset (default 18)")

    batching = command("batching", cmd_batching, "set a model's dynamic batching")
    batching.add_argument("model")
    batching.add_argument("--off", action="store_true", help="run every request on its own")
    batching.add_argument("--max-batch-size", type=int, default=64)
    batching.add_argument("--max-delay-ms", type=float, default=0.0)
    batching.add_argument("--reset", action="store_true", help="use the server's default again")

    command("models", cmd_models, "list models and versions")
    command("datasets", cmd_datasets, "list datasets")
    upload = command("upload", cmd_upload, "upload .npy features and targets as a dataset")
    upload.add_argument("name")
    upload.add_argument("--features", required=True)
    upload.add_argument("--targets", required=True)
    upload.add_argument("--split", default="train")
    upload.add_argument("--classes", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `torchwire` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from torchwire.service.__main__ import main as serve

        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        with Client(
            args.server,
            token=args.token,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        ) as client:
            output = args.handler(client, args)
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(_dump(output) if args.json else output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
