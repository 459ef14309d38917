"""The TorchWire servicer: validate, convert, call the core, convert back. Nothing else."""

from collections.abc import Iterator

import grpc

from torchwire.service.api import convert
from torchwire.service.errors import InvalidArgument
from torchwire.service.jobs import JobManager
from torchwire.service.models import ModelService
from torchwire.service.store import Store
from torchwire.service.store.layout import check_name
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


class TorchWireServicer(pb_grpc.TorchWireServicer):
    """Implements `torchwire.v1.TorchWire` on top of the store, the job manager and the models."""

    def __init__(self, store: Store, jobs: JobManager, models: ModelService) -> None:
        self.store = store
        self.jobs = jobs
        self.models = models

    def UploadDataset(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument.field(
                "header",
                first and first.WhichOneof("part"),
                "the first message must be the upload header",
            )

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
        info = self.store.datasets.upload(
            header.name, header.split or "train", list(header.classes), chunks()
        )
        return convert.dataset(info)

    def ListDatasets(self, request, context):
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset(info) for info in self.store.datasets.all()]
        )

    def Train(self, request, context):
        record = self.jobs.submit(convert.train_spec(request))
        return convert.job(record, [])

    def WatchJob(self, request, context) -> Iterator[pb.JobEvent]:
        if request.after_seq < 0:
            raise InvalidArgument.field("after_seq", request.after_seq, "must be >= 0")
        for record in self.jobs.watch(request.job_id, request.after_seq, context.is_active):
            yield convert.job_event(record)

    def GetJob(self, request, context):
        return convert.job(self.jobs.get(request.job_id), self.jobs.history(request.job_id))

    def ListJobs(self, request, context):
        if request.state and request.state not in convert.JOB_STATE_FROM_PB:
            raise InvalidArgument.field("state", request.state, "is not a JobState")
        if request.model_name:
            check_name("model_name", request.model_name)
        limit = _bounded("limit", request.limit, 100, 1000)
        records = self.store.registry.list_jobs(
            convert.JOB_STATE_FROM_PB.get(request.state, ""), request.model_name, limit
        )
        return pb.ListJobsResponse(jobs=[convert.job(r, []) for r in records])

    def CancelJob(self, request, context):
        record = self.jobs.cancel(request.job_id)
        return convert.job(record, self.jobs.history(record.id))

    def Evaluate(self, request, context):
        if not request.dataset.name:
            raise InvalidArgument.field("dataset.name", "", "is required")
        batch_size = _bounded("batch_size", request.batch_size, 256, 65536)
        record, result = self.models.evaluate(
            request.model_name,
            request.version,
            request.dataset.name,
            request.dataset.split or "test",
            batch_size,
        )
        return convert.evaluation(record, result)

    def Predict(self, request, context):
        names = [_OUTPUT_NAMES.get(o) for o in request.outputs]
        if None in names:
            raise InvalidArgument.field("outputs", list(request.outputs), "unknown PredictOutput")
        if request.top_k < 0:
            raise InvalidArgument.field("top_k", request.top_k, "must be >= 0 (0 means 1)")
        inputs = convert.decode_tensor("inputs", request.inputs)
        record, prediction = self.models.predict(
            request.model_name, request.version, inputs, set(names), request.top_k
        )
        return convert.prediction(record, prediction)

    def ListModels(self, request, context):
        return pb.ListModelsResponse(
            models=[
                convert.model(name, versions, with_history=False)
                for name, versions in self.store.models.all().items()
            ]
        )

    def GetModel(self, request, context):
        return convert.model(
            request.name, self.store.models.versions(request.name), with_history=True
        )

    def DeleteModel(self, request, context):
        return pb.DeleteModelResponse(
            deleted_versions=self.models.delete(request.name, request.version)
        )


def add_to_server(servicer: TorchWireServicer, server: grpc.Server) -> None:
    """Registers the servicer on a server."""
    pb_grpc.add_TorchWireServicer_to_server(servicer, server)
