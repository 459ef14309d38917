"""ImportModel: a model made elsewhere (an ONNX file, a TorchScript file, or a state_dict
for an architecture of the catalog) becomes a version like a trained one.

The upload is spooled under the store's `imports` folder while its size is bounded and its
sha256 computed; the file is checked in a child process and run once on a batch of zeros;
only then are its files copied into the version's folder and the version registered.
"""

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchwire.service.core import transforms
from torchwire.service.core.architectures import ARCHITECTURES, ModelConfig, Params
from torchwire.service.core.datasets import CLASSIFICATION, REGRESSION
from torchwire.service.core.formats import FILE_NAMES, ONNX, TORCHSCRIPT
from torchwire.service.core.imports import WIRE_DTYPES, convert_state_dict, inspect_onnx, smoke_run
from torchwire.service.core.isolation import Child, Factory
from torchwire.service.core.records import (
    ImportedFile,
    ModelVersionRecord,
    VersionMetadata,
    check_name,
)
from torchwire.service.core.runtimes import IsolatedTorchScript
from torchwire.service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from torchwire.service.store import Store

STATE_DICT = "state_dict"
IMPORT_FORMATS = (ONNX, TORCHSCRIPT, STATE_DICT)
INSPECT_TIMEOUT_S = 300.0
"""How long the check of one file may take in its child process."""
MAX_CLASSES = 65536
_IMAGE_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class ImportRequest:
    """An import's header in core terms (see `ImportHeader` in the contract).

    Attributes:
        input_shape, input_dtype: () and "" when not given (an ONNX file declares them).
        task: "" means classification.
        architecture, params: what a state_dict's weights are for; "" and None otherwise.
        output_size: a state_dict's head width; 0 reads it from the file.
    """

    model_name: str
    format: str
    file_name: str
    size_bytes: int
    input_shape: tuple[int, ...] = ()
    input_dtype: str = ""
    task: str = ""
    classes: tuple[str, ...] = ()
    eval_transforms: tuple[dict[str, Any], ...] = ()
    image_mode: str = ""
    architecture: str = ""
    params: Params | None = None
    output_size: int = 0


@dataclass(frozen=True)
class _Found:
    """What the check of the file found."""

    input_shape: tuple[int, ...]
    input_dtype: str
    output_size: int
    checkpoint: Path | None = None
    artifact: dict[str, Any] | None = None


class ModelImporter:
    """Receives, checks and registers imported models.

    Args:
        store: where the version is registered.
        max_import_bytes: the largest file accepted (RESOURCE_EXHAUSTED beyond).
    """

    def __init__(self, store: Store, max_import_bytes: int) -> None:
        self.store = store
        self.max_import_bytes = max_import_bytes
        # Leftovers of uploads that a crash interrupted; one server owns the store.
        shutil.rmtree(store.layout.imports, ignore_errors=True)
        # Checks load whole models into a child's memory: two at a time at most.
        self._checking = threading.Semaphore(2)

    def check(self, request: ImportRequest) -> None:
        """Validates the header before any byte of the file is received.

        Raises:
            InvalidArgument: a field is malformed or does not fit the format.
            ResourceExhausted: the file is larger than max_import_bytes.
        """
        check_name("model_name", request.model_name)
        fmt = request.format
        if fmt not in IMPORT_FORMATS:
            raise InvalidArgument.field("format", fmt, f"must be one of {IMPORT_FORMATS}")
        if len(request.file_name) > 255:
            raise InvalidArgument.field("file_name", request.file_name, "at most 255 characters")
        if request.size_bytes < 1:
            raise InvalidArgument.field("size_bytes", request.size_bytes, "must be >= 1")
        if request.size_bytes > self.max_import_bytes:
            raise ResourceExhausted(
                f"size_bytes={request.size_bytes} exceeds max_import_bytes={self.max_import_bytes}"
            )
        shape = request.input_shape
        if len(shape) > 8 or any(not 1 <= d <= 1 << 20 for d in shape):
            raise InvalidArgument.field(
                "input_shape", list(shape), "at most 8 dimensions, each in [1, 1048576]"
            )
        if not shape and fmt != ONNX:
            raise InvalidArgument.field(
                "input_shape", [], f"is required for a {fmt} import (e.g. [3, 224, 224])"
            )
        dtypes = ("float32",) if fmt == STATE_DICT else WIRE_DTYPES
        if request.input_dtype and request.input_dtype not in dtypes:
            raise InvalidArgument.field(
                "input_dtype", request.input_dtype, f"a {fmt} import takes one of {dtypes}"
            )
        self._check_outputs(request)
        self._check_architecture(request)

    def _check_outputs(self, request: ImportRequest) -> None:
        if request.task not in ("", CLASSIFICATION, REGRESSION):
            raise InvalidArgument.field(
                "task", request.task, f"must be {CLASSIFICATION!r} or {REGRESSION!r}"
            )
        if request.task == REGRESSION and request.classes:
            raise InvalidArgument.field(
                "classes", list(request.classes)[:8], "a regression model has no classes"
            )
        if len(request.classes) > MAX_CLASSES or not all(request.classes):
            raise InvalidArgument.field(
                "classes", len(request.classes), f"give 1-{MAX_CLASSES} non-empty names"
            )
        if request.image_mode not in ("", *_IMAGE_MODES.values()):
            raise InvalidArgument.field(
                "image_mode", request.image_mode, f"must be one of {sorted(_IMAGE_MODES.values())}"
            )
        transforms.build(transforms.with_to_tensor(request.eval_transforms), "eval_transforms")

    def _check_architecture(self, request: ImportRequest) -> None:
        if request.format != STATE_DICT:
            if request.architecture or request.output_size:
                raise InvalidArgument.field(
                    "architecture",
                    request.architecture or request.output_size,
                    "architecture and output_size belong to a state_dict import only",
                )
            return
        if request.architecture not in ARCHITECTURES:
            raise InvalidArgument.field(
                "architecture",
                request.architecture,
                f"a state_dict import names its architecture: one of {sorted(ARCHITECTURES)}",
            )
        if not 0 <= request.output_size <= 65536:
            raise InvalidArgument.field(
                "output_size", request.output_size, "must be in [0, 65536] (0: read the file)"
            )
        ARCHITECTURES[request.architecture].check(request.params, request.input_shape)

    def import_model(
        self, request: ImportRequest, chunks: Iterable[bytes], trailer: Callable[[], str | None]
    ) -> ModelVersionRecord:
        """Receives the file, checks it and registers it as a new version.

        Args:
            request: the header (validated here first).
            chunks: the file's bytes, in order.
            trailer: after `chunks` ends, the sha256 the client sent; None when no trailer came.

        Raises:
            InvalidArgument: a bad header, a truncated or corrupted upload, or a file that
                fails its checks. Nothing is registered then.
            ResourceExhausted: the file is larger than max_import_bytes.
        """
        self.check(request)
        self.store.layout.imports.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.store.layout.imports) as scratch:
            upload = Path(scratch) / "upload"
            digest = self._receive(request, chunks, trailer, upload)
            with self._checking:
                found = self._inspect(request, upload, Path(scratch))
            metadata = self._metadata(request, found, digest)
            artifacts = {}
            if found.artifact is not None:
                meta = {**found.artifact, "sha256": digest, "size_bytes": request.size_bytes}
                artifacts[request.format] = (upload, meta)
            version = self.store.versions.register(
                request.model_name, metadata, checkpoint=found.checkpoint, artifacts=artifacts
            )
        return self.store.versions.get(request.model_name, version)

    def _receive(
        self,
        request: ImportRequest,
        chunks: Iterable[bytes],
        trailer: Callable[[], str | None],
        target: Path,
    ) -> str:
        """Writes the chunks to `target`; returns their sha256 once it matches the trailer's."""
        digest, size = hashlib.sha256(), 0
        with open(target, "wb") as fh:
            for chunk in chunks:
                size += len(chunk)
                if size > request.size_bytes:
                    raise InvalidArgument.field(
                        "size_bytes",
                        request.size_bytes,
                        f"more bytes arrived ({size} so far) than the header announced",
                    )
                digest.update(chunk)
                fh.write(chunk)
        claimed = trailer()
        if claimed is None:
            raise InvalidArgument.field(
                "trailer",
                "",
                f"the stream ended after {size} of {request.size_bytes} bytes without its "
                "trailer (the sha256): it was cut short; send it again",
            )
        if size != request.size_bytes:
            raise InvalidArgument.field(
                "size_bytes",
                request.size_bytes,
                f"only {size} bytes arrived before the trailer: the upload was cut short",
            )
        if claimed.lower() != digest.hexdigest():
            raise InvalidArgument.field(
                "trailer.sha256",
                claimed,
                f"the {size} bytes received have sha256 {digest.hexdigest()}: "
                "the upload was corrupted; send it again",
            )
        return digest.hexdigest()

    def _inspect(self, request: ImportRequest, upload: Path, scratch: Path) -> _Found:
        """Checks the file in a child process and runs it once."""
        if request.format == ONNX:
            found = self._in_child(
                request,
                inspect_onnx,
                (str(upload), request.file_name, list(request.input_shape), request.input_dtype),
            )
            shape, dtype = tuple(found["input_shape"]), found["input_dtype"]
            artifact = self._artifact(ONNX, {"opset": found["opset"]})
            return _Found(shape, dtype, found["output_size"], artifact=artifact)
        if request.format == TORCHSCRIPT:
            dtype = request.input_dtype or "float32"
            try:
                runtime = IsolatedTorchScript(upload, torch.device("cpu"), self._label(request))
            except FailedPrecondition as err:  # the loader failed, crashed or hung on it
                raise InvalidArgument.field(
                    "file", request.file_name, f"cannot be loaded as TorchScript: {err.message}"
                ) from err
            try:
                output_size = smoke_run(runtime.run, request.input_shape, dtype)
            finally:
                runtime.close()
            artifact = self._artifact(TORCHSCRIPT, {"opset": 0})
            return _Found(request.input_shape, dtype, output_size, artifact=artifact)
        checkpoint = scratch / "model.pt"
        config = self._model_config(request, request.output_size)
        found = self._in_child(
            request, convert_state_dict, (str(upload), request.file_name, config, str(checkpoint))
        )
        return _Found(request.input_shape, "float32", found["output_size"], checkpoint)

    def _in_child(self, request: ImportRequest, check: Factory, args: tuple) -> dict[str, Any]:
        """What a check found, run in a child process; a child that crashes or hangs on the
        file fails the import like any other bad file."""
        try:
            child = Child(self._label(request), check, args, INSPECT_TIMEOUT_S)
        except FailedPrecondition as err:
            raise InvalidArgument.field("file", request.file_name, err.message) from err
        child.close()
        return child.ready

    @staticmethod
    def _label(request: ImportRequest) -> str:
        return f"the check of {request.file_name or request.format!r}"

    @staticmethod
    def _artifact(fmt: str, meta: dict[str, Any]) -> dict[str, Any]:
        """An imported file's artifact metadata: no parity check compared it with anything."""
        return {
            "file_name": FILE_NAMES[fmt],
            "max_abs_diff": 0.0,
            "parity_batch_sizes": [],
            "imported": True,
            **meta,
        }

    @staticmethod
    def _model_config(request: ImportRequest, output_size: int) -> dict[str, Any]:
        """The state_dict's architecture as `ModelConfig.to_dict()` (output_size 0: unknown
        yet, so the params' check runs here and the build in the child)."""
        assert request.params is not None
        return {
            **ModelConfig(request.architecture, request.params, request.input_shape, 1).to_dict(),
            "output_size": output_size,
        }

    def _metadata(self, request: ImportRequest, found: _Found, digest: str) -> VersionMetadata:
        """The version's metadata: the header's, reconciled with what the file showed."""
        task = request.task or CLASSIFICATION
        classes = request.classes
        width = found.output_size
        if task == CLASSIFICATION:
            wanted = 2 if width == 1 else width
            if classes and len(classes) != wanted:
                raise InvalidArgument.field(
                    "classes",
                    len(classes),
                    f"the model gives {width} output{'s' if width > 1 else ''}: name {wanted} "
                    "classes",
                )
            classes = classes or tuple(str(i) for i in range(wanted))
        image_mode = request.image_mode
        if request.eval_transforms and not image_mode:
            image_mode = _IMAGE_MODES.get(found.input_shape[0], "") if found.input_shape else ""
            if not image_mode:
                raise InvalidArgument.field(
                    "image_mode",
                    "",
                    f"inputs {list(found.input_shape)} are not 1- or 3-channel images: give "
                    "image_mode with eval_transforms",
                )
        model_config = None
        if request.format == STATE_DICT:
            model_config = self._model_config(request, width)
        return VersionMetadata(
            task=task,
            input_shape=found.input_shape,
            input_dtype=found.input_dtype,
            output_size=width,
            classes=classes,
            training=None,
            metrics={},
            best_epoch=0,
            history=(),
            eval_transforms=request.eval_transforms,
            image_mode=image_mode,
            imported=ImportedFile(
                request.format, request.file_name, digest, request.size_bytes, model_config
            ),
        )
