"""The `torchwire` command line: client commands that talk to a running server, and `serve` and
`worker`, which start the server's own entry point."""

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from torchwire.client.client import Client
from torchwire.client.commands import (
    cmd_batching,
    cmd_cancel,
    cmd_datasets,
    cmd_delete,
    cmd_download,
    cmd_evaluate,
    cmd_export,
    cmd_import,
    cmd_job,
    cmd_jobs,
    cmd_models,
    cmd_plot,
    cmd_predict,
    cmd_resume,
    cmd_train,
    cmd_upload,
    cmd_watch,
    dump,
)
from torchwire.client.jobs import JobError
from torchwire.client.messages import EXPORT_FORMATS, IMPORT_FORMATS, JOB_STATES
from torchwire.defaults import DEFAULT_ADDRESS
from torchwire.v1 import torchwire_pb2 as pb

SERVER_ENV = "TORCHWIRE_SERVER"
SERVER_COMMANDS = {
    "serve": "run the server (see `torchwire serve --help`)",
    "worker": "join a distributed job of the server from this machine "
    "(see `torchwire worker --help`)",
}
"""Commands that run server code: `main` hands them to `python -m torchwire.service`."""


def _integer(bits: int) -> Callable[[str], int]:
    """An argparse type: an integer that fits the contract's `bits`-bit integer fields."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise argparse.ArgumentTypeError(f"{text} is out of range (a {bits}-bit integer)")
        return value

    return parse


_int32, _int64 = _integer(32), _integer(64)


def _ints(text: str) -> list[int]:
    try:
        return [_int32(part) for part in text.split(",") if part]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not integers separated by commas") from err


def _bucket_sizes(text: str) -> list[int] | str:
    """Sizes such as 1,8,64, or "off" (none), or "default" (the server's)."""
    return text if text in ("off", "default") else _ints(text)


def _names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def _json_list(text: str) -> list:
    """A JSON array, such as a list of transforms."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON array: [...]")
    return value


def _model_ref(text: str) -> pb.ModelRef:
    """MODEL or MODEL:VERSION."""
    name, _, version = text.partition(":")
    if version and not version.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: the version after ':' must be a number")
    return pb.ModelRef(name=name, version=int(version or 0))


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake told in one line on stderr (exit code 2), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def connection_flags() -> Parser:
    """The flags of every command that calls a server: where, how, and the output's form."""
    flags = Parser(add_help=False)
    flags.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV, DEFAULT_ADDRESS),
        help=f"host:port of the server (env {SERVER_ENV})",
    )
    flags.add_argument("--json", action="store_true", help="machine-readable output")
    flags.add_argument(
        "--token",
        default=os.environ.get("TORCHWIRE_TOKEN"),
        help="bearer token (env TORCHWIRE_TOKEN)",
    )
    for name in ("ca", "cert", "key"):
        env = f"TORCHWIRE_TLS_{name.upper()}"
        flags.add_argument(
            f"--tls-{name}",
            default=os.environ.get(env),
            help=f"TLS: PEM file of the {name} (env {env})",
        )
    return flags


def connect(args: argparse.Namespace) -> Client:
    """A client for the flags of `connection_flags`.

    Raises:
        ValueError: a client certificate without its key, or the other way round, or a file
            that is not PEM.
    """
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: give both, or neither")
    for flag, path, marker in (
        ("--tls-ca", args.tls_ca, b"-----BEGIN CERTIFICATE-----"),
        ("--tls-cert", args.tls_cert, b"-----BEGIN CERTIFICATE-----"),
        ("--tls-key", args.tls_key, b"PRIVATE KEY-----"),
    ):
        if path and marker not in Path(path).read_bytes():
            raise ValueError(f"{flag} {path!r}: not a PEM file ({marker.decode()!r} missing)")
    return Client(
        args.server,
        token=args.token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


Command = Callable[[str, Callable, str], argparse.ArgumentParser]
"""Adds a client command: its name, its handler and its help; returns its parser."""


TRAINING_OPTIONS = {
    "epochs": "passes over the training data (default 20)",
    "batch_size": "samples per batch (default 64)",
    "learning_rate": "learning rate (default 0.001)",
    "optimizer": "optimizer (default adam)",
    "momentum": "momentum of sgd and rmsprop (default 0.9)",
    "weight_decay": "weight decay (default 0; 0.01 for adamw)",
    "loss": "loss (default cross_entropy; mse or l1 for regression data)",
    "val_fraction": "share of the training split held out for validation (default 0.1)",
    "patience": "early stopping: epochs without improvement (default 5; 0: off)",
    "min_delta": "early stopping: the improvement that counts (default 0)",
    "seed": "seed of weights, shuffling and the validation split (default 0)",
    "shuffle": "shuffle the training data every epoch (default on)",
    "drop_last": "drop the last incomplete batch (default off)",
    "num_workers": "DataLoader worker processes (default 0)",
    "device": "where to train (default auto: cuda, then mps, then cpu)",
    "tensorboard": "write TensorBoard event files under the job's directory",
    "label_smoothing": "cross_entropy's label smoothing (default 0)",
    "nesterov": "sgd: Nesterov momentum (default off)",
    "scheduler": "learning-rate schedule (default constant)",
    "step_size": "step scheduler: epochs between decays (default 10)",
    "gamma": "step scheduler: decay factor (default 0.1)",
    "grad_clip_norm": "clip the gradients' L2 norm to this (default 0: off)",
    "monitor": "what early stopping watches: val_loss (default), val_accuracy or val_mae",
    "amp": "CUDA: float16 autocast with gradient scaling (default on)",
    "channels_last": "train image models in channels_last memory format (default off)",
    "compile": "torch.compile the model for training (default off)",
}
"""The help of each TrainingConfig field's flag: `train` has one flag per field."""
TRAINING_CHOICES = {
    "optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "loss": ("cross_entropy", "nll", "bce_with_logits", "mse", "l1"),
    "scheduler": ("constant", "step", "cosine", "one_cycle"),
    "device": ("auto", "cpu", "cuda", "mps"),
}
_FLAG_TYPES: dict[int, Callable[[str], Any]] = {
    FieldDescriptor.TYPE_INT32: _int32,
    FieldDescriptor.TYPE_INT64: _int64,
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_STRING: str,
}


def _source_flags(group: argparse._ArgumentGroup) -> None:
    """What a file source (`--source`) holds: DataSource's fields besides format and path."""
    group.add_argument(
        "--label-pattern",
        help="image_files: a regex over the file name without its extension; "
        "its first group is the label",
    )
    group.add_argument("--target-columns", type=_names, help="csv: the target columns, e.g. y")
    group.add_argument(
        "--feature-columns", type=_names, help="csv: the feature columns (default: the others)"
    )
    group.add_argument("--task", choices=("classification", "regression"), help="csv: the task")


def _training_options(train: argparse.ArgumentParser) -> None:
    """A flag for every field of TrainingConfig (`--batch-size`, `--amp/--no-amp`, ...)."""
    options = train.add_argument_group("training options (TrainingConfig)")
    for field in pb.TrainingConfig.DESCRIPTOR.fields:
        flags = ["--" + field.name.replace("_", "-")]
        flags += ["--lr"] if field.name == "learning_rate" else []
        help_text = TRAINING_OPTIONS[field.name]
        if field.type == FieldDescriptor.TYPE_BOOL:
            options.add_argument(*flags, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            options.add_argument(
                *flags,
                type=_FLAG_TYPES[field.type],
                choices=TRAINING_CHOICES.get(field.name),
                help=help_text,
            )


def _train_commands(command: Command) -> None:
    train = command("train", cmd_train, "submit a training job")
    train.add_argument("model", help="model name to register a new version of")
    train.add_argument(
        "--spec", help="a TrainRequest in JSON (transforms, model, config...); flags override it"
    )
    data = train.add_argument_group("data")
    data.add_argument("--dataset", help="a named dataset (default digits)")
    data.add_argument("--source", help="FORMAT:PATH under a data root, e.g. image_folder:pets")
    data.add_argument("--split", default="", help="the dataset's split (default train)")
    _source_flags(data)
    data.add_argument(
        "--transforms", type=_json_list, help='training transforms in JSON: [{"resize": ...}, ...]'
    )
    data.add_argument(
        "--eval-transforms",
        type=_json_list,
        help="evaluation and Predict transforms in JSON (default: derived from --transforms)",
    )
    model = train.add_argument_group("model")
    model.add_argument("--arch", choices=("mlp", "cnn"))
    model.add_argument("--torchvision", help="a torchvision architecture, e.g. resnet18")
    model.add_argument("--hidden-sizes", type=_ints, default=[], help="e.g. 128,64")
    model.add_argument("--channels", type=_ints, default=[], help="e.g. 32,64")
    model.add_argument("--dropout", type=float)
    model.add_argument("--init-from", type=_model_ref, help="MODEL[:VERSION] to fine-tune from")
    _training_options(train)
    train.add_argument("--wait", action="store_true", help="follow the job with a progress bar")


def _job_commands(command: Command) -> None:
    jobs = command("jobs", cmd_jobs, "list jobs")
    jobs.add_argument("--state", choices=tuple(JOB_STATES))
    jobs.add_argument("--model")
    jobs.add_argument("--limit", type=_int32, default=0)
    command("job", cmd_job, "show a job and its learning curves").add_argument("job_id")
    command(
        "watch", cmd_watch, "follow a job to its end with a progress bar (like train --wait)"
    ).add_argument("job_id")
    command("cancel", cmd_cancel, "cancel a job").add_argument("job_id")
    resume = command("resume", cmd_resume, "continue a job from its last checkpoint")
    resume.add_argument("job_id")
    resume.add_argument("--wait", action="store_true", help="follow it with a progress bar")
    plot = command("plot", cmd_plot, "draw a job's learning curves with matplotlib")
    plot.add_argument("job_id")
    plot.add_argument("--out", required=True, help="image file to write, e.g. curve.png")


def _inference_commands(command: Command) -> None:
    evaluate = command("evaluate", cmd_evaluate, "evaluate a model on a dataset")
    evaluate.add_argument("model")
    evaluate.add_argument("--dataset", default="digits")
    evaluate.add_argument("--source", help="FORMAT:PATH under a data root, e.g. csv:test.csv")
    _source_flags(evaluate.add_argument_group("file source"))
    evaluate.add_argument("--split", default="")
    evaluate.add_argument("--version", type=_int32, default=0)

    predict = command("predict", cmd_predict, "predict a .npy batch, or PNG/JPEG images")
    predict.add_argument("model")
    predict.add_argument(
        "inputs", nargs="+", help="one .npy file of shape [n, *input_shape], or image files"
    )
    predict.add_argument("--version", type=_int32, default=0)
    predict.add_argument("--top-k", type=_int32, default=1)
    predict.add_argument(
        "--runtime",
        choices=("eager", "torchscript", "onnxruntime"),
        default="",
        help="default: the fastest one exported",
    )

    batching = command(
        "batching",
        cmd_batching,
        "show a model's dynamic batching, or change it with the flags below",
    )
    batching.add_argument("model")
    batching.add_argument("--off", action="store_true", help="run every request on its own")
    batching.add_argument(
        "--max-batch-size", type=_int32, help="rows per merged run (turns batching on)"
    )
    batching.add_argument(
        "--max-delay-ms", type=float, help="how long a run waits for more (turns batching on)"
    )
    batching.add_argument(
        "--bucket-sizes",
        type=_bucket_sizes,
        help="pad every run up to one of these batch sizes, e.g. 1,8,64 (fixed-shape "
        "execution); off: no padding for this model; default: the server's --bucket-sizes",
    )
    batching.add_argument("--reset", action="store_true", help="use the server's default again")


def _catalog_commands(command: Command) -> None:
    export = command("export", cmd_export, "export a model to ONNX or TorchScript and download it")
    export.add_argument("model")
    export.add_argument("--format", choices=tuple(EXPORT_FORMATS), default="onnx")
    export.add_argument("--out", required=True, help="where to write the file")
    export.add_argument("--version", type=_int32, default=0)
    export.add_argument("--opset", type=_int32, default=0, help="ONNX opset (default 18)")

    download = command("download", cmd_download, "download a model's stored export")
    download.add_argument("model")
    download.add_argument("--format", choices=tuple(EXPORT_FORMATS), default="onnx")
    download.add_argument("--out", required=True, help="where to write the file")
    download.add_argument("--version", type=_int32, default=0, help="default: the latest")

    delete = command("delete", cmd_delete, "delete a model version, or the whole model")
    delete.add_argument("model")
    delete.add_argument("--version", type=_int32, default=0, help="default: every version")

    imported = command("import", cmd_import, "import an ONNX, TorchScript or state_dict file")
    imported.add_argument("model", help="model name to register a new version of")
    imported.add_argument("file")
    imported.add_argument(
        "--format", choices=tuple(IMPORT_FORMATS), help="default: onnx for a .onnx file"
    )
    imported.add_argument(
        "--arch", help="a state_dict's architecture: mlp, cnn, torchvision:NAME or plugin:NAME"
    )
    imported.add_argument("--input-shape", type=_ints, default=[], help="e.g. 3,224,224")
    imported.add_argument("--input-dtype", default="", help="default: the file's, or float32")
    imported.add_argument("--task", choices=("classification", "regression"), default="")
    imported.add_argument("--classes", nargs="*", default=[])
    imported.add_argument(
        "--eval-transforms",
        type=_json_list,
        default=[],
        help='image preprocessing in JSON: [{"resize": {"size": [256]}}, ...]',
    )
    imported.add_argument("--image-mode", choices=("L", "RGB"), default="")
    imported.add_argument("--output-size", type=_int32, default=0, help="a state_dict's head width")
    command("models", cmd_models, "list models and versions")
    command("datasets", cmd_datasets, "list datasets")
    upload = command("upload", cmd_upload, "upload .npy features and targets as a dataset")
    upload.add_argument("name")
    upload.add_argument("--features", required=True)
    upload.add_argument("--targets", required=True)
    upload.add_argument("--split", default="train")
    upload.add_argument("--classes", nargs="*")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the client commands; `serve` and `worker` are only named here (the
    server's entry point parses their flags)."""
    parser = Parser(prog="torchwire", description="Train, evaluate and serve PyTorch models.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in SERVER_COMMANDS.items():
        commands.add_parser(name, add_help=False, help=help_text)
    common = connection_flags()

    def command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text)
        sub.set_defaults(handler=handler)
        return sub

    for group in (_train_commands, _job_commands, _inference_commands, _catalog_commands):
        group(command)
    return parser


def run_server(command: str, argv: list[str]) -> NoReturn:
    """Replaces this process with the server's entry point, `python -m torchwire.service`
    (with `worker` for `torchwire worker`): its signals and exit code are the server's own.
    -P keeps the current directory off sys.path, as it is for the console script."""
    args = ["-P", "-m", "torchwire.service", *(() if command == "serve" else (command,)), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *args])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `torchwire` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SERVER_COMMANDS:
        run_server(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        with connect(args) as client:
            output = args.handler(client, args)
        print(dump(output) if args.json else output)
    except grpc.RpcError as err:  # the server's answer: exit 1
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except JobError as err:  # the job failed or was cancelled: exit 1
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader (`| head`) has gone: nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError, json_format.ParseError) as err:  # a local mistake: exit 2
        print(f"error: {_local(err)}", file=sys.stderr)
        return 2
    return 0


def _local(err: Exception) -> str:
    """A local mistake in one line: a file that cannot be read or written names its path."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
