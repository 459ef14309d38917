"""The client commands' handlers: each turns parsed flags into calls of the Python client and
its answer into text, or into a value that `--json` prints."""

import argparse
import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from torchwire.client.client import Client
from torchwire.client.jobs import Job
from torchwire.client.messages import history_rows
from torchwire.client.plot import check_image_format, plot_history
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb


def plain(item: Any) -> Any:
    """A value as a client library's JSON sees it: messages as objects with every field (zero
    values included, enums by name, 64-bit integers as numbers), tensors as nested arrays,
    arrays as lists."""
    if isinstance(item, Message):
        return _message(item)
    if isinstance(item, np.ndarray):
        return item.tolist()
    if isinstance(item, list | tuple):
        return [plain(i) for i in item]
    if isinstance(item, dict):
        return {k: plain(v) for k, v in item.items()}
    return item


def _message(message: Message) -> Any:
    if message.DESCRIPTOR.full_name == pb.Tensor.DESCRIPTOR.full_name:
        return tensors.decode(message).tolist()
    document: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.containing_oneof is not None and not message.HasField(field.name):
            continue  # only the set member of a oneof
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            document[field.name] = {
                k: _scalar(field.message_type.fields_by_name["value"], v) for k, v in value.items()
            }
        elif field.is_repeated:
            document[field.name] = [_scalar(field, v) for v in value]
        elif field.message_type is not None and not message.HasField(field.name):
            document[field.name] = None
        else:
            document[field.name] = _scalar(field, value)
    return document


def _scalar(field: Any, value: Any) -> Any:
    """One value of a field: a message, an enum's name, bytes as base64, or as it is."""
    if isinstance(value, Message):
        return _message(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def dump(value: Any) -> str:
    """`--json`'s output."""
    return json.dumps(plain(value), indent=2)


_SOURCE_FLAGS = ("label_pattern", "target_columns", "feature_columns", "task")
"""Flags that describe a file source's contents (DataSource fields)."""


def _state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


def _job_line(job: pb.Job) -> str:
    version = f" -> v{job.model_version}" if job.model_version else ""
    error = f"  ({job.error})" if job.error else ""
    dataset = job.request.dataset
    data = (
        f"source={dataset.source.format}:{dataset.source.path}"
        if dataset.HasField("source")
        else f"dataset={dataset.name}"
    )
    return f"{job.id}  {_state(job):<9}  {job.request.model_name}{version}  {data}{error}"


def _source(args: argparse.Namespace) -> pb.DataSource | None:
    """`--source FORMAT:PATH` (e.g. image_folder:pets/train) as a DataSource, with what the
    file-source flags say of its contents."""
    if args.source is None:
        return None
    fmt, _, path = args.source.partition(":")
    return _described(pb.DataSource(format=fmt, path=path), args)


def _described(source: pb.DataSource, args: argparse.Namespace) -> pb.DataSource:
    """`source` with the file-source flags given laid over it."""
    for key in _SOURCE_FLAGS:
        if getattr(args, key) is not None:
            source.ClearField(key)
            with _naming(f"--{key.replace('_', '-')}"):
                json_format.ParseDict({key: getattr(args, key)}, source)
    return source


@contextmanager
def _naming(flag: str) -> Iterator[None]:
    """Turns a JSON that does not fit its message into a ValueError that names the flag."""
    try:
        yield
    except json_format.ParseError as err:
        raise ValueError(f"{flag}: {' '.join(str(err).split())}") from err


def load_array(path: str, flag: str) -> np.ndarray:
    """A .npy file of numbers.

    Raises:
        ValueError: naming the flag and the file, when it holds Python objects or is not .npy.
        OSError: it cannot be read.
    """
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        why = "holds Python objects, not numbers" if "pickle" in str(err) else str(err)
        raise ValueError(f"{flag} {path!r}: {why}") from err


def _train_request(args: argparse.Namespace) -> pb.TrainRequest:
    """The request of `--spec` (a TrainRequest in JSON), or an MLP on digits, with the
    flags given on the command line laid over it."""
    request = pb.TrainRequest(model=pb.ModelSpec(mlp=pb.MLPSpec()))
    if args.spec:
        with _naming(f"--spec {args.spec!r}"):
            json_format.Parse(Path(args.spec).read_text(), request)
    request.model_name = args.model
    if args.source:
        request.dataset.CopyFrom(pb.DatasetRef(split=args.split, source=_source(args)))
    elif args.dataset or not request.dataset.ByteSize():
        request.dataset.CopyFrom(pb.DatasetRef(name=args.dataset or "digits", split=args.split))
    elif args.split:
        request.dataset.split = args.split
    given = [key for key in _SOURCE_FLAGS if getattr(args, key) is not None]
    if given and not request.dataset.HasField("source"):
        raise ValueError(f"--{given[0].replace('_', '-')} describes files: give --source too")
    if given and not args.source:  # they describe the --spec's source
        _described(request.dataset.source, args)
    for key in ("transforms", "eval_transforms"):
        if getattr(args, key) is not None:
            request.ClearField(key)
            with _naming(f"--{key.replace('_', '-')}"):
                json_format.ParseDict({key: getattr(args, key)}, request)
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
    for field in pb.TrainingConfig.DESCRIPTOR.fields:  # cli.TRAINING_OPTIONS: one flag each
        if getattr(args, field.name) is not None:
            setattr(request.config, field.name, getattr(args, field.name))
    if args.init_from:
        request.init_from.CopyFrom(args.init_from)
    return request


def cmd_train(client: Client, args: argparse.Namespace) -> Any:
    job = client.submit(_train_request(args))
    if not args.wait:
        return job.info() if args.json else f"submitted job {job.id}"
    return _followed(client, job, args)


def _followed(client: Client, job: Job, args: argparse.Namespace) -> Any:
    """Follows a job to its end (a progress bar on stderr): its final state, and the metrics
    of the version it registered. A job that failed or was cancelled raises JobError."""
    final = job.wait(progress=not args.json, raise_on_failure=True)
    if args.json:
        return final
    versions = client.model(final.request.model_name).versions
    (version,) = [v for v in versions if v.version == final.model_version]
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(version.metrics.items()))
    return f"{_job_line(final)}\nmetrics: {metrics}"


def cmd_watch(client: Client, args: argparse.Namespace) -> Any:
    job = client.job(args.job_id)
    job.info()  # an unknown job: NOT_FOUND before any progress bar
    return _followed(client, job, args)


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
    if args.wait:
        return _followed(client, job, args)
    final = job.info()
    return final if args.json else _job_line(final)


def cmd_evaluate(client: Client, args: argparse.Namespace) -> Any:
    dataset = None if args.source else args.dataset
    result = client.evaluate(
        args.model,
        dataset,
        split=args.split,
        source=_source(args),
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
        result = client.predict(args.model, load_array(args.inputs[0], "inputs"), **options)
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


def _output_path(out: str) -> Path:
    """`--out`, checked before anything is asked of the server: its folder must exist.

    Raises:
        ValueError: naming the flag and the folder.
    """
    path = Path(out)
    if not path.parent.is_dir():
        raise ValueError(f"--out {out!r}: the folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"--out {out!r} is a folder; name the file to write")
    return path


def cmd_plot(client: Client, args: argparse.Namespace) -> Any:
    check_image_format(_output_path(args.out))
    job = client.job(args.job_id).info()
    rows = history_rows(job.history)
    title = f"{job.request.model_name} (job {job.id})"
    path = plot_history(rows, args.out, title, job.best_epoch)
    return {"path": str(path), "epochs": len(rows)} if args.json else f"wrote {path}"


def cmd_export(client: Client, args: argparse.Namespace) -> Any:
    _output_path(args.out)
    artifact = client.export(
        args.model, args.format, args.out, version=args.version, opset=args.opset
    )
    if args.json:
        return artifact
    return (
        f"wrote {args.out}: {artifact.size_bytes} bytes, sha256 {artifact.sha256}, "
        f"max abs diff from eager {artifact.max_abs_diff:.2g}"
    )


def cmd_download(client: Client, args: argparse.Namespace) -> Any:
    artifact = client.download_artifact(
        args.model, args.format, _output_path(args.out), version=args.version
    )
    if args.json:
        return artifact
    return f"wrote {args.out}: {artifact.size_bytes} bytes, sha256 {artifact.sha256}"


def cmd_delete(client: Client, args: argparse.Namespace) -> Any:
    deleted = client.delete_model(args.model, args.version)
    if args.json:
        return {"model_name": args.model, "deleted_versions": deleted}
    return f"deleted {args.model} " + ", ".join(f"v{v}" for v in deleted)


def cmd_batching(client: Client, args: argparse.Namespace) -> Any:
    values = (args.max_batch_size, args.max_delay_ms, args.bucket_sizes)
    changes = args.off or any(value is not None for value in values)
    if args.reset and changes:
        raise ValueError("--reset returns to the server's settings: give it alone")
    if not (args.reset or changes):
        config = client.model(args.model).batching  # a read-only view
    else:
        current = client.model(args.model).batching
        config = client.configure_batching(
            args.model,
            enabled=not args.off,
            max_batch_size=current.max_batch_size
            if args.max_batch_size is None
            else args.max_batch_size,
            max_delay_ms=current.max_delay_ms if args.max_delay_ms is None else args.max_delay_ms,
            bucket_sizes=_bucket_sizes(args.bucket_sizes, current),
            reset=args.reset,
        )
    if args.json:
        return config
    source = "server default" if config.server_default else "model setting"
    state = "on" if config.enabled else "off"
    buckets = ",".join(map(str, config.bucket_sizes)) or "none"
    whose = "the model's" if config.own_bucket_sizes else "the server's"
    return (
        f"{args.model}: batching {state}, max_batch_size {config.max_batch_size}, "
        f"max_delay_ms {config.max_delay_ms:g}, bucket_sizes {buckets} ({whose}) ({source})"
    )


def _bucket_sizes(given: list[int] | str | None, current: pb.BatchingConfig) -> list[int] | None:
    """The sizes a batching change sends: those given ("off": none; "default": the server's,
    None), else the model's own ones as they are, else None (the server's, which follow
    max_batch_size under "auto")."""
    if given == "default":
        return None
    if given == "off":
        return []
    if isinstance(given, list):
        return given
    return list(current.bucket_sizes) if current.own_bucket_sizes else None


def _version_line(name: str, v: pb.ModelVersion) -> str:
    origin = f"job {v.job_id}" if v.job_id else f"imported {v.imported.file_name}"
    metrics = ", ".join(f"{k}={x:.4f}" for k, x in sorted(v.metrics.items()))
    return (
        f"{name} v{v.version}  {v.task}  input {v.input_dtype}{list(v.input_shape)}  "
        f"{origin}  runtimes {','.join(v.runtimes)}  {metrics}"
    ).rstrip()


def cmd_models(client: Client, args: argparse.Namespace) -> Any:
    models = client.models()
    if args.json:
        return models
    lines = [_version_line(model.name, v) for model in models for v in model.versions]
    return "\n".join(lines) or "no models"


def cmd_import(client: Client, args: argparse.Namespace) -> Any:
    from tqdm.auto import tqdm

    if not Path(args.file).is_file():
        raise ValueError(f"{args.file!r} is not a file")
    bars: list[Any] = []  # drawn from the first chunk on: a refusal before it prints one line

    def progress(sent: int, total: int) -> None:
        if not bars:
            name = Path(args.file).name
            bars.append(tqdm(total=total, unit="B", unit_scale=True, desc=f"import {name}"))
        bars[0].update(sent - bars[0].n)

    try:
        response = client.import_model(
            args.model,
            args.file,
            format=args.format,
            input_shape=args.input_shape,
            input_dtype=args.input_dtype,
            task=args.task,
            classes=args.classes,
            eval_transforms=args.eval_transforms,
            image_mode=args.image_mode,
            architecture=args.arch,
            output_size=args.output_size,
            progress=None if args.json else progress,
        )
    finally:
        for bar in bars:
            bar.close()
    return response if args.json else _version_line(response.model_name, response.version)


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
    features = load_array(args.features, "--features")
    targets = load_array(args.targets, "--targets")
    dataset = client.upload_dataset(
        args.name, features, targets, split=args.split, classes=args.classes or ()
    )
    split = args.split or "train"
    return dataset if args.json else f"uploaded {args.name}/{split}: {len(features)} samples"
