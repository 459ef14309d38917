"""The TorchWire servicer: validate, convert, call the core, convert back. Nothing else."""

from collections.abc import Iterator

from torchwire.service.api import convert
from torchwire.service.api.methods import time_left
from torchwire.service.api.streaming import STREAM_WINDOW, pipelined
from torchwire.service.app.catalog import Catalog
from torchwire.service.app.importing import ModelImporter
from torchwire.service.app.jobs import JobManager
from torchwire.service.app.prediction import PendingPrediction
from torchwire.service.app.serving import ModelService
from torchwire.service.core.export import DEFAULT_OPSET, DEFAULT_TOLERANCE
from torchwire.service.core.records import check_name
from torchwire.service.errors import InvalidArgument, TorchwireError, counted
from torchwire.v1 import torchwire_pb2 as pb
from torchwire.v1 import torchwire_pb2_grpc as pb_grpc

_OUTPUT_NAMES = {
    pb.PREDICT_OUTPUT_RAW: "raw",
    pb.PREDICT_OUTPUT_PROBABILITIES: "probabilities",
    pb.PREDICT_OUTPUT_TOP_K: "top_k",
}


def _bounded(field: str, value: int, default: int, maximum: int) -> int:
    if not 0 <= value <= maximum:
        raise InvalidArgument.field(field, value, f"must be in [0, {maximum}] (0 means {default})")
    return value or default


class PredictionServicer(pb_grpc.TorchWireServicer):
    """Predict and PredictStream over the models: all that a frontend process serves itself
    (see `torchwire.service.frontend`)."""

    def __init__(self, models: ModelService) -> None:
        self.models = models

    def Predict(self, request, context):
        return self._answer(self._submit(request), context)

    def PredictStream(self, request_iterator, context):
        # Up to STREAM_WINDOW requests are in flight: enough to keep the batcher busy, few
        # enough that memory stays bounded while the client streams on. Each answer goes out
        # as soon as it and those before it are done.
        def start(index: int, request: pb.PredictRequest) -> PendingPrediction:
            try:
                return self._submit(request)
            except TorchwireError as err:
                raise type(err)(f"request[{index}]: {err.message}") from err

        return pipelined(
            request_iterator,
            start,
            lambda pending: self._answer(pending, context),
            STREAM_WINDOW,
        )

    def _submit(self, request: pb.PredictRequest) -> PendingPrediction:
        names = [_OUTPUT_NAMES.get(o) for o in request.outputs]
        if None in names:
            raise InvalidArgument.field("outputs", list(request.outputs), "unknown PredictOutput")
        if request.top_k < 0:
            raise InvalidArgument.field("top_k", request.top_k, "must be >= 0 (0 means 1)")
        if request.images:
            if request.HasField("inputs"):
                raise InvalidArgument.field(
                    "images",
                    counted(len(request.images), "image"),
                    "give inputs or images, not both",
                )
            inputs = self.models.decode_images(
                request.model_name, request.version, list(request.images), request.runtime
            )
        else:
            inputs = convert.decode_tensor("inputs", request.inputs)
        return self.models.submit(
            request.model_name, request.version, inputs, set(names), request.top_k, request.runtime
        )

    @staticmethod
    def _answer(pending: PendingPrediction, context) -> pb.PredictResponse:
        return convert.prediction(pending.record, pending.result(time_left(context)))


class TorchWireServicer(PredictionServicer):
    """Implements `torchwire.v1.TorchWire` on top of the store, the job manager and the models."""

    def __init__(
        self,
        catalog: Catalog,
        jobs: JobManager,
        models: ModelService,
        importer: ModelImporter,
        max_message_bytes: int,
    ) -> None:
        super().__init__(models)
        self.catalog = catalog
        self.jobs = jobs
        self.importer = importer
        self.max_message_bytes = max_message_bytes

    def UploadDataset(self, request_iterator, context):
        first = _header(request_iterator, "upload header")

        def chunks():
            for index, message in enumerate(request_iterator):
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument.field(
                        f"chunk[{index}]",
                        message.WhichOneof("part"),
                        "only the first message may be a header",
                    )
                yield (
                    convert.decode_tensor(f"chunk[{index}].features", message.chunk.features),
                    convert.decode_tensor(f"chunk[{index}].targets", message.chunk.targets),
                )

        header = first.header
        info = self.catalog.upload_dataset(
            header.name, header.split or "train", list(header.classes), chunks()
        )
        return convert.dataset(info)

    def ListDatasets(self, request, context):
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset(info) for info in self.catalog.datasets()]
        )

    def Train(self, request, context):
        record = self.jobs.submit(convert.train_spec(request))
        return convert.job(record, [])

    def WatchJob(self, request, context) -> Iterator[pb.JobEvent]:
        if request.after_seq < 0:
            raise InvalidArgument.field("after_seq", request.after_seq, "must be >= 0")
        for record in self.jobs.job_log.watch(request.job_id, request.after_seq, context.is_active):
            yield convert.job_event(record)

    def GetJob(self, request, context):
        return convert.job(
            self.jobs.job_log.get(request.job_id), self.jobs.job_log.history(request.job_id)
        )

    def ListJobs(self, request, context):
        if request.state and request.state not in convert.JOB_STATE_FROM_PB:
            raise InvalidArgument.field("state", request.state, "is not a JobState")
        if request.model_name:
            check_name("model_name", request.model_name)
        limit = _bounded("limit", request.limit, 100, 1000)
        records = self.catalog.jobs(
            convert.JOB_STATE_FROM_PB.get(request.state, ""), request.model_name, limit
        )
        return pb.ListJobsResponse(jobs=[convert.job(r, []) for r in records])

    def CancelJob(self, request, context):
        record = self.jobs.cancel(request.job_id)
        return convert.job(record, self.jobs.job_log.history(record.id))

    def ResumeJob(self, request, context):
        record = self.jobs.resume(request.job_id)
        return convert.job(record, self.jobs.job_log.history(record.id))

    def Evaluate(self, request, context):
        source = convert.file_source(request.dataset)
        batch_size = _bounded("batch_size", request.batch_size, 256, 65536)
        record, result = self.models.evaluate(
            request.model_name,
            request.version,
            request.dataset.name,
            request.dataset.split or "test",
            batch_size,
            source,
        )
        return convert.evaluation(record, result)

    def Export(self, request, context):
        fmt = convert.export_format("format", request.format)
        record, meta = self.models.export(
            request.model_name,
            request.version,
            fmt,
            request.opset or DEFAULT_OPSET,
            request.tolerance or DEFAULT_TOLERANCE,
        )
        return convert.artifact(fmt, meta)

    def DownloadArtifact(self, request, context):
        fmt = convert.export_format("format", request.format)
        limit = self.max_message_bytes - 4096
        chunk_bytes = _bounded("chunk_bytes", request.chunk_bytes, min(1 << 20, limit), limit)
        for piece in self.catalog.artifact_chunks(
            request.model_name, request.version, fmt, chunk_bytes
        ):
            chunk = pb.ArtifactChunk(offset=piece.offset, data=piece.data)
            if piece.artifact is not None:
                chunk.artifact.CopyFrom(convert.artifact(fmt, piece.artifact))
            yield chunk

    def ConfigureBatching(self, request, context):
        config = convert.batching_config(request.batching) if request.HasField("batching") else None
        return convert.batching(self.models.configure_batching(request.model_name, config))

    def ListModels(self, request, context):
        return pb.ListModelsResponse(
            models=[convert.model(view, with_history=False) for view in self.catalog.models()]
        )

    def GetModel(self, request, context):
        return convert.model(self.catalog.model(request.name), with_history=True)

    def DeleteModel(self, request, context):
        return pb.DeleteModelResponse(
            deleted_versions=self.models.delete(request.name, request.version)
        )

    def ImportModel(self, request_iterator, context):
        header = convert.import_request(_header(request_iterator, "import header").header)
        self.importer.check(header)  # before a byte of the file is received
        trailer: list[str] = []

        def chunks() -> Iterator[bytes]:
            for index, message in enumerate(request_iterator, start=1):
                part = message.WhichOneof("part")
                if part == "chunk" and not trailer:
                    yield message.chunk
                elif part == "trailer" and not trailer:
                    trailer.append(message.trailer.sha256)
                else:
                    raise InvalidArgument.field(
                        f"message[{index}]",
                        part,
                        "after the header come chunks, then one trailer, and nothing else",
                    )

        record = self.importer.import_model(
            header, chunks(), lambda: trailer[0] if trailer else None
        )
        return pb.ImportModelResponse(
            model_name=record.name,
            version=convert.model_version(
                record, with_history=False, artifacts=self.catalog.artifacts(record)
            ),
        )


def _header(request_iterator: Iterator, what: str):
    """The first message of a client stream, which must be its header."""
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument.field(
            "header", first and first.WhichOneof("part"), f"the first message must be the {what}"
        )
    return first
