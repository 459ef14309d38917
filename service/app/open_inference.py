"""The Open Inference Protocol (KServe v2) data plane: what its gRPC and HTTP front doors
both call. Inference runs through the same ModelService as torchwire.v1 Predict (same
runtimes, batching, cache, limits and statistics); only the names differ."""

import json
import math
import re
import time
from collections.abc import Callable

import numpy as np

from torchwire import __version__
from torchwire.service.app.catalog import Catalog
from torchwire.service.app.inference_types import (
    BYTES,
    DATATYPES,
    DTYPES,
    IndexEntry,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelConfiguration,
    ModelMetadata,
    Raw,
    RequestedOutput,
    TensorSpec,
    VersionReport,
    datatype_of,
    from_raw,
)
from torchwire.service.app.prediction import InputFields, PendingPrediction, ServedRuntime
from torchwire.service.app.serving import ModelService
from torchwire.service.app.shared_memory import SharedMemoryRegistry, Window
from torchwire.service.app.statistics import Key, VersionStatistics, merged
from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.records import ModelVersionRecord
from torchwire.service.errors import FailedPrecondition, InvalidArgument, NotFound

PLATFORM = "pytorch_torchwire"
REPOSITORY = "torchwire"
"""The one repository: the store."""
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "system_shared_memory",
)
UNSUPPORTED = {
    "priority": "torchwire has one queue per model version: requests have no priority",
    "sequence_id": "torchwire models are stateless: there is no sequence batching",
    "sequence_start": "torchwire models are stateless: there is no sequence batching",
    "sequence_end": "torchwire models are stateless: there is no sequence batching",
    "classification": "torchwire has no classification extension; ask for the 'class' and "
    "'probabilities' outputs",
}
"""Parameters of protocol extensions torchwire does not implement, and why: refused, never
silently ignored."""
INPUT = "input"
OUTPUTS = {"output": "raw", "probabilities": "probabilities", "class": "top_k"}
"""v2 output name -> what ModelService computes; the last two for classifiers only."""


def is_decimal(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²' and other scripts' digits)."""
    return re.fullmatch(r"[0-9]+", text) is not None


FIELDS = InputFields(
    "inputs[0].datatype", "inputs[0].shape", "inputs[0].contents", datatype_of, False
)


def version_number(field: str, text: str) -> int:
    """A version as the protocol writes it (a decimal string; empty for the latest)."""
    if text and not is_decimal(text):
        raise InvalidArgument.field(field, text, "must be a version number, or empty for latest")
    return int(text or 0)


class OpenInference:
    """The v2 protocol over the store and the models.

    Args:
        catalog: read views of the store.
        models: the models in use.
        shared_memory: the registered shared-memory regions.
        ready: whether the server takes requests (False while shutting down).
        other_statistics: the statistics of other processes serving the same store (frontends).
    """

    def __init__(
        self,
        catalog: Catalog,
        models: ModelService,
        shared_memory: SharedMemoryRegistry,
        ready: Callable[[], bool],
        other_statistics: Callable[[], list[dict[Key, VersionStatistics]]] = list,
    ) -> None:
        self.catalog = catalog
        self.models = models
        self.shared_memory = shared_memory
        self.ready = ready
        self.other_statistics = other_statistics

    # ---------------------------------------------------------------- metadata

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        """The server's name, version and protocol extensions."""
        return "torchwire", __version__, EXTENSIONS

    def model_ready(self, name: str, version: str) -> bool:
        """Whether the version exists and the server takes requests. Nothing is loaded:
        a version loads on its first request (RepositoryIndex says which are loaded)."""
        try:
            self.catalog.version(name, version_number("version", version), "name")
        except NotFound:
            return False
        return self.ready()

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        """A model's versions, and one version's (default: the latest) tensors."""
        versions = self.catalog.model(name).versions
        record = self.catalog.version(name, version_number("version", version), "name")
        return ModelMetadata(
            record.name,
            [str(v.version) for v in versions],
            PLATFORM,
            [_input_spec(record)],
            _output_specs(record),
        )

    def model_config(self, name: str, version: str) -> ModelConfiguration:
        """A version's configuration: tensors, batching in force, device, runtime."""
        record = self.catalog.version(name, version_number("version", version), "name")
        meta = record.metadata
        parameters = {
            "task": meta.task,
            "classes": json.dumps(list(meta.classes)),
            "image_mode": meta.image_mode,
            "eval_transforms": json.dumps(meta.eval_transforms),
            "max_request_rows": str(self.models.max_predict_rows),
        }
        return ModelConfiguration(
            record.name,
            PLATFORM,
            self.models.runtime_for(record.name, record.version, ""),
            [_input_spec(record)],
            _output_specs(record),
            self.models.batching(record.name),
            str(self.models.device),
            parameters,
        )

    # ---------------------------------------------------------------- inference

    def infer(self, request: InferRequest, timeout: float | None) -> InferResponse:
        """Runs a request: `start`, then `finish`."""
        return self.start(request).finish(timeout)

    def start(self, request: InferRequest) -> "PendingInference":
        """Decodes a request's inputs (images preprocessed, shared memory read) and queues
        the batch with everyone else's.

        Raises:
            NotFound: the model, version or a shared-memory region does not exist.
            InvalidArgument: a malformed tensor; the message names the v2 field.
        """
        served = self.models.served(request.model, version_number("model_version", request.version))
        started = time.perf_counter()
        record = served.record
        key = (record.name, record.version)
        try:
            timeout = _timeout(request)
            batch = self._batch(request.inputs, served)
            wanted = self._requested(request, record)
            windows = self._windows(wanted, record, len(batch))
        except Exception:
            self.models.statistics.failed(key, time.perf_counter() - started)
            raise
        prepared = time.perf_counter()
        pending = self.models.submit(
            record.name,
            record.version,
            batch,
            {OUTPUTS[o.name] for o in wanted},
            top_k=1,
            fields=FIELDS,
        )
        return PendingInference(
            self, request.id, pending, wanted, windows, started, prepared, timeout
        )

    def _batch(self, inputs: list[InferInput], served: ServedRuntime) -> np.ndarray:
        """The request's one input as the batch the version takes."""
        if len(inputs) != 1:
            raise InvalidArgument.field(
                "inputs", len(inputs), f"torchwire models take exactly one input, {INPUT!r}"
            )
        tensor = inputs[0]
        _refuse_parameters(tensor.parameters, "inputs[0].parameters")
        if tensor.name != INPUT:
            raise InvalidArgument.field("inputs[0].name", tensor.name, f"must be {INPUT!r}")
        if tensor.datatype not in DATATYPES:
            raise InvalidArgument.field(
                "inputs[0].datatype", tensor.datatype, f"must be one of {list(DATATYPES)}"
            )
        if any(d < 0 for d in tensor.shape):
            raise InvalidArgument.field(
                "inputs[0].shape", list(tensor.shape), "has a negative dimension"
            )
        data = tensor.data
        if isinstance(data, Window):
            data = Raw(self.shared_memory.view(data), f"{data.field}.shared_memory_byte_size")
        if isinstance(data, Raw):
            data = from_raw(data, tensor.datatype, tensor.shape)
        if tensor.datatype != BYTES:
            assert isinstance(data, np.ndarray)
            return data
        assert isinstance(data, list)
        record = served.record
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ((), (1,)):
            raise InvalidArgument.field(
                "inputs[0].shape", list(tensor.shape), "BYTES images take [n] or [n, 1]"
            )
        if not record.metadata.image_mode:
            raise InvalidArgument.field(
                "inputs[0].datatype",
                BYTES,
                f"model {record.name!r} v{record.version} was trained on tensors; send "
                f"{datatype_of(record.metadata.input_dtype)}",
            )
        return self.models.decode_images(record.name, record.version, data, field="inputs[0]")

    def _windows(
        self, wanted: list[RequestedOutput], record: ModelVersionRecord, rows: int
    ) -> dict[str, np.ndarray]:
        """The shared-memory windows outputs go to, each checked to hold its output before
        the model runs."""
        specs = {spec.name: spec for spec in _output_specs(record)}
        windows = {}
        for output in wanted:
            if output.window is None:
                continue
            spec = specs[output.name]
            itemsize = np.dtype(DTYPES[spec.datatype]).itemsize
            needed = rows * math.prod(spec.shape[1:]) * itemsize
            if output.window.byte_size < needed:
                raise InvalidArgument.field(
                    f"{output.window.field}.shared_memory_byte_size",
                    output.window.byte_size,
                    f"output {output.name!r} needs {needed} bytes",
                )
            windows[output.name] = self.shared_memory.view(output.window)
        return windows

    def _requested(
        self, request: InferRequest, record: ModelVersionRecord
    ) -> list[RequestedOutput]:
        """The outputs asked for, checked against the version's; all of them if none."""
        available = [spec.name for spec in _output_specs(record)]
        outputs = request.outputs
        if not outputs:
            return [RequestedOutput(n, binary=request.binary_outputs) for n in available]
        for index, output in enumerate(outputs):
            _refuse_parameters(output.parameters, f"outputs[{index}].parameters")
            if output.name not in available:
                raise InvalidArgument.field(
                    f"outputs[{index}].name",
                    output.name,
                    f"model {record.name!r} v{record.version} has the outputs {available}",
                )
        return outputs

    # --------------------------------------------------------------- statistics

    def statistics(self, name: str, version: str) -> list[VersionReport]:
        """Statistics of every version (of one model, or of one version), this process' and
        its frontends' summed.

        Raises:
            NotFound: the model or version does not exist.
        """
        number = version_number("version", version)
        if name:
            records = (
                [self.catalog.version(name, number, "name")]
                if number
                else self.catalog.model(name).versions
            )
        elif number:
            raise InvalidArgument.field("version", version, "needs a model name")
        else:
            records = [r for view in self.catalog.models() for r in view.versions]
        totals = merged([self.models.statistics.snapshot(), *self.other_statistics()])
        loaded = self.models.loaded_bytes()
        return [
            VersionReport(
                r.name,
                r.version,
                totals.get((r.name, r.version), VersionStatistics()),
                loaded.get((r.name, r.version), 0),
            )
            for r in records
        ]

    # --------------------------------------------------------------- repository

    def repository_index(self, repository: str, ready_only: bool) -> list[IndexEntry]:
        """Every version in the store, READY when loaded in this process' cache."""
        _check_repository(repository)
        loaded = self.models.loaded_bytes()
        entries = [
            IndexEntry(
                r.name,
                r.version,
                (r.name, r.version) in loaded,
                "" if (r.name, r.version) in loaded else "not loaded; loads on first request",
            )
            for view in self.catalog.models()
            for r in view.versions
        ]
        return [e for e in entries if e.ready or not ready_only]

    def load(self, repository: str, name: str, parameters: dict[str, object]) -> None:
        """Loads (and warms up) a model's latest version in its fastest runtime."""
        _check_repository(repository)
        _check_load_parameters(parameters, ())
        self.models.served(name, 0)

    def unload(self, repository: str, name: str, parameters: dict[str, object]) -> None:
        """Drops a model's loaded runtimes; it stays in the store."""
        _check_repository(repository)
        # A torchwire model has no dependents: "unload_dependents" changes nothing.
        _check_load_parameters(parameters, ("unload_dependents",))
        self.catalog.model(name)
        self.models.forget(name)


class PendingInference:
    """A started request: its batch queued, its outputs still to come."""

    def __init__(
        self,
        plane: OpenInference,
        request_id: str,
        pending: PendingPrediction,
        wanted: list[RequestedOutput],
        windows: dict[str, np.ndarray],
        started: float,
        prepared: float,
        timeout: float | None,
    ) -> None:
        self._statistics = plane.models.statistics
        self._timeout = timeout
        self._id = request_id
        self._pending = pending
        self._wanted = wanted
        self._windows = windows
        self._started = started
        self._prepared = prepared

    def finish(self, timeout: float | None) -> InferResponse:
        """Waits for the outputs (up to `timeout` seconds, or the request's own `timeout`
        parameter if shorter), then encodes them or writes them to their shared-memory
        windows.

        Raises:
            DeadlineExceeded: the timeout passed first.
            InvalidArgument: an output's window is too small.
        """
        record = self._pending.record
        key = (record.name, record.version)
        if self._timeout is not None:
            timeout = self._timeout if timeout is None else min(timeout, self._timeout)
        result = self._pending.result(timeout)
        produced = {
            "output": result.raw,
            "probabilities": result.probabilities,
            "class": result.top_indices,
        }
        finishing = time.perf_counter()
        try:
            outputs = [
                _output(o, produced[o.name], self._windows.get(o.name)) for o in self._wanted
            ]
        except Exception:
            self._statistics.failed(key, time.perf_counter() - self._started)
            raise
        self._statistics.prepared(
            key, self._prepared - self._started, time.perf_counter() - finishing
        )
        return InferResponse(record.name, record.version, self._id, outputs)


def _output(
    wanted: RequestedOutput, array: np.ndarray | None, window: np.ndarray | None
) -> InferOutput:
    """An output as the response carries it, or written into its window."""
    assert array is not None
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    datatype, shape = datatype_of(array.dtype.name), tuple(array.shape)
    if window is None or wanted.window is None:
        return InferOutput(wanted.name, datatype, shape, array, binary=wanted.binary)
    if array.nbytes > len(window):
        raise InvalidArgument.field(
            f"{wanted.window.field}.shared_memory_byte_size",
            wanted.window.byte_size,
            f"output {wanted.name!r} needs {array.nbytes} bytes",
        )
    window[: array.nbytes] = array.view(np.uint8).reshape(-1)
    written = Window(wanted.window.region, wanted.window.offset, array.nbytes, "")
    return InferOutput(wanted.name, datatype, shape, None, written)


def _timeout(request: InferRequest) -> float | None:
    """The request's `timeout` parameter in seconds (None without one); other request
    parameters are refused."""
    parameters = dict(request.parameters)
    microseconds = parameters.pop("timeout", 0)
    _refuse_parameters(parameters, "parameters")
    if not isinstance(microseconds, int) or isinstance(microseconds, bool) or microseconds < 0:
        raise InvalidArgument.field(
            "parameters.timeout", microseconds, "must be a whole number of microseconds >= 0"
        )
    return microseconds / 1e6 if microseconds else None


def _refuse_parameters(parameters: dict[str, object], field: str) -> None:
    """Refuses parameters that no one took, naming them: a setting is never ignored."""
    for name in sorted(parameters):
        why = UNSUPPORTED.get(name, "is not a parameter torchwire takes here")
        raise InvalidArgument.field(f"{field}.{name}", parameters[name], why)


def _check_repository(repository: str) -> None:
    if repository not in ("", REPOSITORY):
        raise NotFound(f"repository_name={repository!r}: the one repository is {REPOSITORY!r}")


def _check_load_parameters(parameters: dict[str, object], accepted: tuple[str, ...]) -> None:
    if any(name == "config" or name.startswith("file:") for name in parameters):
        raise FailedPrecondition(
            f"parameters={sorted(parameters)}: torchwire serves models from its store, with "
            "the configuration they were trained or imported with; import files with "
            "ImportModel"
        )
    _refuse_parameters({k: v for k, v in parameters.items() if k not in accepted}, "parameters")


def _input_spec(record: ModelVersionRecord) -> TensorSpec:
    meta = record.metadata
    return TensorSpec(INPUT, datatype_of(meta.input_dtype), (-1, *meta.input_shape))


def _output_specs(record: ModelVersionRecord) -> list[TensorSpec]:
    meta = record.metadata
    specs = [TensorSpec("output", "FP32", (-1, meta.output_size))]
    if meta.task == CLASSIFICATION:
        specs += [
            TensorSpec("probabilities", "FP32", (-1, len(meta.classes))),
            TensorSpec("class", "INT64", (-1, 1)),
        ]
    return specs
