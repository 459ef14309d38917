"""The Open Inference Protocol v2 (KServe / Triton `inference.GRPCInferenceService`), served by
the same ModelService as torchwire.v1 Predict: same runtimes, batching, cache and limits."""

import math
from collections.abc import Callable

import numpy as np

from torchwire import __version__
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.api.methods import time_left
from torchwire.service.app.catalog import Catalog
from torchwire.service.app.serving import ModelService
from torchwire.service.errors import InvalidArgument, NotFound
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

#: v2 datatype -> (NumPy dtype name, the typed-contents field that carries it).
DATATYPES = {
    "FP32": ("float32", "fp32_contents"),
    "FP64": ("float64", "fp64_contents"),
    "FP16": ("float16", ""),  # raw only: no typed field holds half floats
    "INT64": ("int64", "int64_contents"),
    "INT32": ("int32", "int_contents"),
    "UINT8": ("uint8", "uint_contents"),
    "BOOL": ("bool", "bool_contents"),
}
DATATYPE_OF = {dtype: name for name, (dtype, _) in DATATYPES.items()}
INPUT = "input"
#: Output name -> (what ModelService returns, v2 datatype); the last two for classifiers only.
OUTPUTS = {"output": "raw", "probabilities": "probabilities", "class": "top_k"}


def _version(field: str, text: str) -> int:
    if text and not text.isdigit():
        raise InvalidArgument.field(field, text, "must be a version number, or empty for latest")
    return int(text or 0)


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """Implements `inference.GRPCInferenceService` on top of the model store and service."""

    def __init__(self, catalog: Catalog, models: ModelService, ready: Callable[[], bool]) -> None:
        self.catalog = catalog
        self.models = models
        self.ready = ready

    def ServerLive(self, request, context):
        return v2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return v2.ServerReadyResponse(ready=self.ready())

    def ModelReady(self, request, context):
        try:
            self.models.served(request.name, _version("version", request.version))
        except NotFound:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=self.ready())

    def ServerMetadata(self, request, context):
        return v2.ServerMetadataResponse(name="torchwire", version=__version__)

    def ModelMetadata(self, request, context):
        versions = self.catalog.model(request.name).versions
        record = self.catalog.version(request.name, _version("version", request.version), "name")
        meta = record.metadata
        tensor = v2.ModelMetadataResponse.TensorMetadata
        outputs = [tensor(name="output", datatype="FP32", shape=[-1, meta.output_size])]
        if meta.task == "classification":
            outputs += [
                tensor(name="probabilities", datatype="FP32", shape=[-1, len(meta.classes)]),
                tensor(name="class", datatype="INT64", shape=[-1, 1]),
            ]
        return v2.ModelMetadataResponse(
            name=record.name,
            versions=[str(v.version) for v in versions],
            platform="pytorch_torchwire",
            inputs=[
                tensor(
                    name=INPUT,
                    datatype=DATATYPE_OF[meta.input_dtype],
                    shape=[-1, *meta.input_shape],
                )
            ],
            outputs=outputs,
        )

    def ModelInfer(self, request, context):
        inputs = _input(request)
        wanted = [o.name for o in request.outputs]
        unknown = [name for name in wanted if name not in OUTPUTS]
        if unknown:
            raise InvalidArgument.field(
                "outputs.name", unknown[0], f"must be one of {sorted(OUTPUTS)}"
            )
        pending = self.models.submit(
            request.model_name,
            _version("model_version", request.model_version),
            inputs,
            {OUTPUTS[name] for name in wanted},
            top_k=1,
        )
        result = pending.result(time_left(context))
        response = v2.ModelInferResponse(
            model_name=pending.record.name, model_version=str(pending.record.version), id=request.id
        )
        produced = {
            "output": result.raw,
            "probabilities": result.probabilities,
            "class": result.top_indices,
        }
        for name in wanted or OUTPUTS:
            array = produced[name]
            if array is None:
                continue
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            response.outputs.add(
                name=name, datatype=DATATYPE_OF[array.dtype.name], shape=list(array.shape)
            )
            response.raw_output_contents.append(array.tobytes())
        return response


def _input(request: v2.ModelInferRequest) -> np.ndarray:
    """The request's one input tensor as an array, from raw or typed contents."""
    if len(request.inputs) != 1:
        raise InvalidArgument.field(
            "inputs", len(request.inputs), f"torchwire models take exactly one input, {INPUT!r}"
        )
    tensor = request.inputs[0]
    if tensor.name != INPUT:
        raise InvalidArgument.field("inputs[0].name", tensor.name, f"must be {INPUT!r}")
    if tensor.datatype not in DATATYPES:
        raise InvalidArgument.field(
            "inputs[0].datatype", tensor.datatype, f"must be one of {sorted(DATATYPES)}"
        )
    dtype, field = DATATYPES[tensor.datatype]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument.field(
                "raw_input_contents",
                len(request.raw_input_contents),
                "must hold one entry per input",
            )
        raw = pb.Tensor(dtype=dtype, shape=tensor.shape, data=request.raw_input_contents[0])
        try:
            return tensors.decode(raw)
        except ValueError as err:
            raise InvalidArgument(f"raw_input_contents[0]: {err}") from err
    values = getattr(tensor.contents, field) if field else ()
    if any(d < 0 for d in tensor.shape) or len(values) != math.prod(tensor.shape):
        raise InvalidArgument.field(
            "inputs[0].shape",
            list(tensor.shape),
            f"holds {len(values)} values in contents.{field or 'raw_input_contents'}",
        )
    return np.asarray(values, dtype=dtype).reshape(tuple(tensor.shape))
