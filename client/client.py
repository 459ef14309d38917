"""The Python client: upload data, train and follow jobs, evaluate, predict, manage models."""

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from torchwire.client.channel import open_channel
from torchwire.client.jobs import Job, JobError
from torchwire.client.messages import (
    EXPORT_FORMATS,
    PredictResult,
    architecture_spec,
    as_array,
    dataset_ref,
    import_format,
    message,
    model_spec,
    predict_request,
    predict_result,
)
from torchwire.defaults import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb
from torchwire.v1 import torchwire_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_ADDRESS", "Client", "Job", "JobError"]


class Client:
    """A connection to a torchwire server.

    Args:
        address: host:port of the server.
        max_message_bytes: the largest message sent or received (set on both ends).
        timeout: deadline in seconds for unary calls; None waits indefinitely.
        token: a bearer token, for servers started with auth tokens.
        tls_ca: PEM file of the CA that signed the server's certificate: connect with TLS.
        tls_cert, tls_key: PEM files of this client's certificate and key, for mutual TLS.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = 120.0,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.address = address
        self.max_message_bytes = max_message_bytes
        self.timeout = timeout
        self.channel = open_channel(address, max_message_bytes, token, tls_ca, tls_cert, tls_key)
        self.stub = pb_grpc.TorchWireStub(self.channel)

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the server's health check says SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0, wait_for_ready=True
                ).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.address} is not SERVING after {timeout} s")
            time.sleep(0.1)

    # ---------------------------------------------------------------- data

    def upload_dataset(
        self,
        name: str,
        features: Any,
        targets: Any,
        *,
        split: str = "train",
        classes: Iterable[str] = (),
        chunk_bytes: int = 4 * 1024 * 1024,
    ) -> pb.Dataset:
        """Streams arrays to the server as a dataset split.

        Args:
            name: the dataset's name, used later in `train` and `evaluate`.
            features: [n, ...] float32 inputs (N,C,H,W for images).
            targets: [n] int64 class ids, or [n] / [n, k] float32 regression values.
            split: "train" or "test".
            classes: optional class names, index = class id.
            chunk_bytes: about how many bytes each streamed chunk carries.
        """
        features, targets = as_array(features), as_array(targets)
        row_bytes = max(1, features[:1].nbytes + targets[:1].nbytes)
        rows = max(1, min(chunk_bytes, self.max_message_bytes // 2) // row_bytes)

        def messages() -> Iterator[pb.UploadDatasetRequest]:
            yield pb.UploadDatasetRequest(
                header=pb.UploadHeader(name=name, split=split, classes=list(classes))
            )
            for start in range(0, len(features), rows):
                yield pb.UploadDatasetRequest(
                    chunk=pb.UploadChunk(
                        features=tensors.encode(features[start : start + rows]),
                        targets=tensors.encode(targets[start : start + rows]),
                    )
                )

        return self.stub.UploadDataset(messages(), timeout=self.timeout)

    def datasets(self) -> list[pb.Dataset]:
        """Built-in and uploaded datasets."""
        return list(self.stub.ListDatasets(pb.ListDatasetsRequest(), timeout=self.timeout).datasets)

    # ---------------------------------------------------------------- jobs

    def train(
        self,
        model_name: str,
        dataset: str | None = None,
        *,
        split: str = "",
        source: pb.DataSource | dict[str, Any] | None = None,
        architecture: str = "mlp",
        hidden_sizes: Iterable[int] = (),
        channels: Iterable[int] = (),
        dropout: float = 0.0,
        model: pb.ModelSpec | dict[str, Any] | None = None,
        transforms: Iterable[pb.Transform | dict[str, Any]] = (),
        eval_transforms: Iterable[pb.Transform | dict[str, Any]] = (),
        init_from: str | tuple[str, int] | None = None,
        distributed: pb.DistributedConfig | dict[str, Any] | None = None,
        **config: Any,
    ) -> Job:
        """Submits a training job and returns at once.

        Messages can be given as protobuf objects or as dicts in their JSON form, e.g.
        `source={"format": "image_folder", "path": "pets/train"}`,
        `model={"torchvision": {"name": "resnet18"}}` or
        `transforms=[{"resize": {"size": [32, 32]}}, {"random_horizontal_flip": {}}]`.

        Args:
            model_name: the model to register a new version of.
            dataset: a built-in ("digits"), plugin or uploaded dataset; None means "digits",
                or no name when `source` is given.
            split: the split to train on; "" means "train".
            source: files under the server's data roots (a `DataSource`).
            architecture: "mlp" or "cnn" when `model` is not given.
            hidden_sizes: MLP layer widths (default [128, 64]).
            channels: CNN block widths (default [32, 64]).
            dropout: dropout probability.
            model: the whole `ModelSpec` (torchvision and plugin models, activation, ...).
            transforms: training preprocessing (`Transform`s), in order.
            eval_transforms: evaluation preprocessing; empty derives it from `transforms`.
            init_from: fine-tune from a model's latest version, or (name, version).
            distributed: DDP over processes and machines, e.g. `{"nproc_per_node": 2}`.
            **config: `TrainingConfig` fields: epochs, batch_size, learning_rate, optimizer,
                loss, scheduler, monitor, patience, seed, ... (see the protocol).
        """
        if model is None:
            model = model_spec(architecture, hidden_sizes, channels, dropout)
        request = pb.TrainRequest(
            model_name=model_name,
            dataset=dataset_ref(dataset, split, source),
            model=message(model, pb.ModelSpec),
            config=pb.TrainingConfig(**config),
            transforms=[message(t, pb.Transform) for t in transforms],
            eval_transforms=[message(t, pb.Transform) for t in eval_transforms],
        )
        if init_from is not None:
            name, version = (init_from, 0) if isinstance(init_from, str) else init_from
            request.init_from.CopyFrom(pb.ModelRef(name=name, version=version))
        if distributed is not None:
            request.distributed.CopyFrom(message(distributed, pb.DistributedConfig))
        return self.submit(request)

    def submit(self, request: pb.TrainRequest) -> Job:
        """Submits a whole TrainRequest; `train` builds one from keyword arguments."""
        return Job(self, self.stub.Train(request, timeout=self.timeout).id)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job."""
        return Job(self, job_id)

    def jobs(self, state: str = "", model_name: str = "", limit: int = 0) -> list[pb.Job]:
        """Jobs, newest first; `state` is e.g. "running" or "succeeded"."""
        request = pb.ListJobsRequest(
            state=pb.JobState.Value(f"JOB_STATE_{state.upper()}") if state else 0,
            model_name=model_name,
            limit=limit,
        )
        return list(self.stub.ListJobs(request, timeout=self.timeout).jobs)

    # ------------------------------------------------------------ inference

    def evaluate(
        self,
        model_name: str,
        dataset: str | None = None,
        *,
        split: str = "",
        source: pb.DataSource | dict[str, Any] | None = None,
        version: int = 0,
        batch_size: int = 0,
    ) -> pb.EvaluateResponse:
        """Evaluates a model version (0 = latest) on a dataset split ("" = "test"), or on
        the files of `source`, with the model's evaluation transforms."""
        request = pb.EvaluateRequest(
            model_name=model_name,
            version=version,
            dataset=dataset_ref(dataset, split, source),
            batch_size=batch_size,
        )
        return self.stub.Evaluate(request, timeout=self.timeout)

    def predict(
        self,
        model_name: str,
        inputs: Any = None,
        *,
        images: Iterable[bytes] = (),
        version: int = 0,
        outputs: Iterable[str] = (),
        top_k: int = 0,
        runtime: str = "",
    ) -> PredictResult:
        """Runs a batch through a model version (0 = latest).

        Args:
            model_name: the model.
            inputs: [n, *input_shape] array or tensor of the model's input dtype.
            images: instead of `inputs`, encoded PNG or JPEG files (bytes) for a model
                trained on images; the server applies the model's preprocessing.
            version: the version; 0 means the latest.
            outputs: any of "raw", "probabilities", "top_k"; empty means all that apply.
            top_k: classes per sample for "top_k" (0 means 1).
            runtime: "eager", "torchscript" or "onnxruntime"; "" lets the server pick the
                fastest one the version has an export for.
        """
        request = predict_request(model_name, inputs, version, outputs, top_k, runtime, images)
        return predict_result(self.stub.Predict(request, timeout=self.timeout))

    def predict_many(
        self,
        model_name: str,
        batches: Iterable[Any],
        *,
        version: int = 0,
        outputs: Iterable[str] = (),
        top_k: int = 0,
        runtime: str = "",
    ) -> Iterator[PredictResult]:
        """Streams batches through one PredictStream call; yields their results in order.

        `batches` is consumed lazily, so it can be a generator over a data set larger than
        memory; the server keeps only a few batches in flight.
        """
        outputs = tuple(outputs)
        requests = (
            predict_request(model_name, batch, version, outputs, top_k, runtime)
            for batch in batches
        )
        for response in self.stub.PredictStream(requests):
            yield predict_result(response)

    # ----------------------------------------------------------------- export

    def export(
        self,
        model_name: str,
        format: str = "onnx",
        path: str | Path | None = None,
        *,
        version: int = 0,
        opset: int = 0,
        tolerance: float = 0.0,
    ) -> pb.Artifact:
        """Exports a model version on the server and, with `path`, downloads the file.

        The artifact is checked against eager PyTorch on the server; the download is
        checked against its sha256 here.

        Args:
            model_name: the model.
            format: "onnx" or "torchscript".
            path: where to write the file; None leaves it on the server.
            version: the version; 0 means the latest.
            opset: ONNX opset (0: the server's default, 18).
            tolerance: largest accepted difference from eager PyTorch (0: 1e-4).
        """
        request = pb.ExportRequest(
            model_name=model_name,
            version=version,
            format=EXPORT_FORMATS[format],
            opset=opset,
            tolerance=tolerance,
        )
        artifact = self.stub.Export(request, timeout=self.timeout)
        if path is not None:
            self.download_artifact(model_name, format, path, version=version)
        return artifact

    def download_artifact(
        self, model_name: str, format: str, path: str | Path, *, version: int = 0
    ) -> pb.Artifact:
        """Downloads a stored export to `path`, verifying its sha256; returns its description."""
        target = Path(path)
        request = pb.DownloadArtifactRequest(
            model_name=model_name, version=version, format=EXPORT_FORMATS[format]
        )
        digest, artifact = hashlib.sha256(), pb.Artifact()
        scratch = target.with_name(f".{target.name}.part")
        try:
            with open(scratch, "wb") as fh:
                for chunk in self.stub.DownloadArtifact(request, timeout=self.timeout):
                    if chunk.HasField("artifact"):
                        artifact = chunk.artifact
                    fh.write(chunk.data)
                    digest.update(chunk.data)
            if digest.hexdigest() != artifact.sha256:
                raise OSError(
                    f"download of {model_name} {format} is corrupt: sha256 "
                    f"{digest.hexdigest()} != {artifact.sha256}"
                )
        except BaseException:
            scratch.unlink(missing_ok=True)  # a refused or broken download leaves nothing
            raise
        scratch.replace(target)
        return artifact

    def configure_batching(
        self,
        model_name: str,
        *,
        enabled: bool = True,
        max_batch_size: int = 64,
        max_delay_ms: float = 0.0,
        bucket_sizes: Sequence[int] | None = None,
        reset: bool = False,
    ) -> pb.BatchingConfig:
        """Sets a model's dynamic batching, or with `reset=True` returns it to the server's.

        `bucket_sizes` are the batch sizes runs are padded up to (fixed-shape execution), the
        model's own; an empty list turns padding off for the model; None keeps the server's
        `--bucket-sizes`."""
        request = pb.ConfigureBatchingRequest(model_name=model_name)
        if not reset:
            request.batching.CopyFrom(
                pb.BatchingConfig(
                    enabled=enabled,
                    max_batch_size=max_batch_size,
                    max_delay_ms=max_delay_ms,
                    bucket_sizes=bucket_sizes or (),
                    own_bucket_sizes=bucket_sizes is not None,
                )
            )
        return self.stub.ConfigureBatching(request, timeout=self.timeout)

    # --------------------------------------------------------------- models

    def import_model(
        self,
        model_name: str,
        path: str | Path,
        *,
        format: str | None = None,
        input_shape: Iterable[int] = (),
        input_dtype: str = "",
        task: str = "",
        classes: Iterable[str] = (),
        eval_transforms: Iterable[pb.Transform | dict[str, Any]] = (),
        image_mode: str = "",
        architecture: str | pb.ModelSpec | dict[str, Any] | None = None,
        output_size: int = 0,
        progress: Callable[[int, int], None] | None = None,
        chunk_bytes: int = 1 << 20,
    ) -> pb.ImportModelResponse:
        """Uploads a model file made elsewhere and registers it as a new version.

        The server checks the file in a child process and runs it once before registering
        anything; the upload ends with the file's sha256, which the server checks.

        Args:
            model_name: the model to register a new version of.
            path: the file.
            format: "onnx", "torchscript" or "state_dict"; None guesses from ".onnx".
            input_shape: one sample's shape, e.g. (3, 224, 224); ONNX files declare theirs.
            input_dtype: e.g. "float32"; ONNX files declare theirs, others default to float32.
            task: "classification" (the default) or "regression".
            classes: class names, index = class id.
            eval_transforms: image preprocessing for Predict and Evaluate (`Transform`s, or
                their JSON dicts such as `{"normalize": {"mean": [0.5], "std": [0.5]}}`).
            image_mode: "L" or "RGB"; empty derives it from the channels when
                eval_transforms are given.
            architecture: a state_dict's architecture: "mlp", "cnn", "torchvision:resnet18",
                "plugin:NAME", or a whole `ModelSpec` (message or dict).
            output_size: a state_dict's head width; 0 reads it from the file.
            progress: called with (bytes sent, file size) after each chunk.
            chunk_bytes: bytes per streamed chunk.
        """
        path = Path(path)
        size = path.stat().st_size
        header = pb.ImportHeader(
            model_name=model_name,
            format=import_format(str(path), format),
            file_name=path.name,
            size_bytes=size,
            input_shape=list(input_shape),
            input_dtype=input_dtype,
            task=task,
            classes=list(classes),
            eval_transforms=[message(t, pb.Transform) for t in eval_transforms],
            image_mode=image_mode,
            output_size=output_size,
        )
        if architecture is not None:
            header.architecture.CopyFrom(architecture_spec(architecture))
        chunk_bytes = max(1, min(chunk_bytes, self.max_message_bytes - 4096))

        def messages() -> Iterator[pb.ImportModelRequest]:
            yield pb.ImportModelRequest(header=header)
            digest, sent = hashlib.sha256(), 0
            with open(path, "rb") as fh:
                while block := fh.read(chunk_bytes):
                    digest.update(block)
                    yield pb.ImportModelRequest(chunk=block)
                    sent += len(block)
                    if progress is not None:
                        progress(sent, size)
            yield pb.ImportModelRequest(trailer=pb.ImportTrailer(sha256=digest.hexdigest()))

        return self.stub.ImportModel(messages(), timeout=self.timeout)

    def models(self) -> list[pb.Model]:
        """Registered models with their versions."""
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)

    def model(self, name: str) -> pb.Model:
        """One model with its versions, metrics and learning curves."""
        return self.stub.GetModel(pb.GetModelRequest(name=name), timeout=self.timeout)

    def delete_model(self, name: str, version: int = 0) -> list[int]:
        """Deletes one version, or every version for 0; returns the deleted versions."""
        response = self.stub.DeleteModel(
            pb.DeleteModelRequest(name=name, version=version), timeout=self.timeout
        )
        return list(response.deleted_versions)
