"""Export formats and inference runtimes: the one table of which file holds each format and
which runtime serves it, read by export, import, serving and the API."""

from collections.abc import Iterable
from dataclasses import dataclass

TORCHSCRIPT, ONNX = "torchscript", "onnx"
"""Export formats."""
EAGER, ONNXRUNTIME = "eager", "onnxruntime"
"""Runtimes besides TorchScript's (which shares its format's name)."""


@dataclass(frozen=True)
class ExportFormat:
    """An export format: the file it is stored in beside the checkpoint, and its runtime."""

    file_name: str
    runtime: str


FORMATS = {
    TORCHSCRIPT: ExportFormat("model.torchscript.pt", TORCHSCRIPT),
    ONNX: ExportFormat("model.onnx", ONNXRUNTIME),
}
RUNTIMES = (EAGER, TORCHSCRIPT, ONNXRUNTIME)
"""Every runtime: eager PyTorch runs the checkpoint, the others run an export."""

FILE_NAMES = {fmt: spec.file_name for fmt, spec in FORMATS.items()}
RUNTIME_OF = {fmt: spec.runtime for fmt, spec in FORMATS.items()}
"""The runtime that serves each export format."""
FORMAT_OF = {runtime: fmt for fmt, runtime in RUNTIME_OF.items()}
"""The export format each runtime but eager serves."""
PREFERENCE = (ONNXRUNTIME, TORCHSCRIPT, EAGER)
"""Runtimes, fastest first: a request that names none gets the first a version has."""


def runtimes_of(has_checkpoint: bool, formats: Iterable[str]) -> tuple[str, ...]:
    """The runtimes a version can run on, fastest first: eager with a checkpoint, and the
    runtime of each of its artifacts' formats."""
    available = {RUNTIME_OF[f] for f in formats} | ({EAGER} if has_checkpoint else set())
    return tuple(r for r in PREFERENCE if r in available)
