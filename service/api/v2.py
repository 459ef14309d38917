"""The Open Inference Protocol v2 over gRPC (KServe / Triton `inference.GRPCInferenceService`):
decode, call the data plane, encode."""

import logging

from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.api import v2_convert as convert
from torchwire.service.api.methods import time_left
from torchwire.service.api.streaming import STREAM_WINDOW, pipelined
from torchwire.service.app.open_inference import OpenInference, PendingInference
from torchwire.service.errors import TorchwireError

log = logging.getLogger(__name__)

INTERNAL = "internal error; the server log has the details"


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """Implements `inference.GRPCInferenceService` on the v2 data plane."""

    def __init__(self, plane: OpenInference) -> None:
        self.plane = plane

    def ServerLive(self, request, context):
        return v2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return v2.ServerReadyResponse(ready=self.plane.ready())

    def ModelReady(self, request, context):
        return v2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    def ServerMetadata(self, request, context):
        name, version, extensions = self.plane.server_metadata()
        return v2.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    def ModelMetadata(self, request, context):
        meta = self.plane.model_metadata(request.name, request.version)
        tensor = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    def ModelInfer(self, request, context):
        response = self.plane.infer(convert.infer_request(request), time_left(context))
        return convert.infer_response(response)

    def ModelStreamInfer(self, request_iterator, context):
        # Up to STREAM_WINDOW requests are in flight, each answered as soon as it and those
        # before it are done; a request that fails is answered in its place with its error,
        # and the stream goes on.
        return pipelined(
            request_iterator,
            lambda index, request: (request, self._start(request)),
            lambda started: self._answer(started[0], started[1], time_left(context)),
            STREAM_WINDOW,
        )

    def _start(self, request: v2.ModelInferRequest) -> PendingInference | Exception:
        try:
            return self.plane.start(convert.infer_request(request))
        except Exception as err:  # answered in its place by _answer
            return err

    @staticmethod
    def _answer(
        request: v2.ModelInferRequest,
        started: PendingInference | Exception,
        timeout: float | None,
    ) -> v2.ModelStreamInferResponse:
        try:
            if isinstance(started, Exception):
                raise started
            response = started.finish(timeout)
        except Exception as err:
            if not isinstance(err, TorchwireError):
                log.exception("ModelStreamInfer: a request failed")
            # The protocol's error answer: the message, and the request it answers.
            return v2.ModelStreamInferResponse(
                error_message=err.message if isinstance(err, TorchwireError) else INTERNAL,
                infer_response=v2.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
        return v2.ModelStreamInferResponse(infer_response=convert.infer_response(response))

    def ModelConfig(self, request, context):
        return convert.model_config(self.plane.model_config(request.name, request.version))

    def ModelStatistics(self, request, context):
        reports = self.plane.statistics(request.name, request.version)
        return convert.statistics(reports, str(self.plane.models.device))

    def RepositoryIndex(self, request, context):
        entries = self.plane.repository_index(request.repository_name, request.ready)
        index = v2.RepositoryIndexResponse.ModelIndex
        return v2.RepositoryIndexResponse(
            models=[
                index(
                    name=e.name,
                    version=str(e.version),
                    state="READY" if e.ready else "UNAVAILABLE",
                    reason=e.reason,
                )
                for e in entries
            ]
        )

    def RepositoryModelLoad(self, request, context):
        parameters = {k: convert.parameter(p) for k, p in request.parameters.items()}
        self.plane.load(request.repository_name, request.model_name, parameters)
        return v2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        parameters = {k: convert.parameter(p) for k, p in request.parameters.items()}
        self.plane.unload(request.repository_name, request.model_name, parameters)
        return v2.RepositoryModelUnloadResponse()

    def SystemSharedMemoryStatus(self, request, context):
        region = v2.SystemSharedMemoryStatusResponse.RegionStatus
        return v2.SystemSharedMemoryStatusResponse(
            regions={
                r.name: region(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
                for r in self.plane.shared_memory.status(request.name)
            }
        )

    def SystemSharedMemoryRegister(self, request, context):
        self.plane.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return v2.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(self, request, context):
        self.plane.shared_memory.unregister(request.name)
        return v2.SystemSharedMemoryUnregisterResponse()
