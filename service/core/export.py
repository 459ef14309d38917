"""Export to TorchScript and ONNX, each checked against eager PyTorch before it is kept."""

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchwire.service.core.architectures import ModelConfig
from torchwire.service.core.files import atomic_write, sha256_of
from torchwire.service.core.formats import ONNX, TORCHSCRIPT
from torchwire.service.core.runtimes import OnnxRuntime, TorchRuntime, load_torchscript
from torchwire.service.errors import FailedPrecondition, InvalidArgument

PARITY_BATCH_SIZES = (1, 7)
DEFAULT_OPSET, OPSETS = 18, range(17, 24)
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "output"
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")
"""The ONNX exporter's libraries, which log each optimisation pass at INFO: a dozen lines
per export in the server's log. Their warnings still show."""
for _name in EXPORTER_LOGGERS:
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class ExportResult:
    """A verified artifact, in place."""

    format: str
    path: Path
    size_bytes: int
    sha256: str
    opset: int
    max_abs_diff: float
    parity_batch_sizes: tuple[int, ...]


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated"
        torch.jit.script(module).save(str(path))


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # The exporter reports its progress on stdout; a server's stdout is not the place.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
        )


_WRITERS = {TORCHSCRIPT: _write_torchscript, ONNX: _write_onnx}


def _open(fmt: str, path: Path) -> TorchRuntime | OnnxRuntime:
    if fmt == TORCHSCRIPT:
        return load_torchscript(path, torch.device("cpu"))
    return OnnxRuntime(path, torch.device("cpu"))


def export_model(
    module: nn.Module,
    config: ModelConfig,
    fmt: str,
    path: Path,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Exports `module` to `path` and keeps the file only if it matches eager PyTorch.

    The check runs seeded random inputs at batch sizes 1 and 7 through both the module
    and the artifact, loaded by the runtime that will serve it; a different batch size
    from the export's example proves the batch dimension is dynamic.

    Raises:
        InvalidArgument: unknown format, opset out of range, or a bad tolerance.
        FailedPrecondition: the export failed, or its outputs differ by more than `tolerance`.
    """
    if fmt not in _WRITERS:
        raise InvalidArgument.field("format", fmt, f"must be one of {tuple(_WRITERS)}")
    if fmt == ONNX and opset not in OPSETS:
        raise InvalidArgument.field("opset", opset, f"must be in [{OPSETS[0]}, {OPSETS[-1]}]")
    if not np.isfinite(tolerance) or tolerance <= 0:
        raise InvalidArgument.field("tolerance", tolerance, "must be > 0")
    module = module.to("cpu").eval()
    generator = torch.Generator().manual_seed(0)
    samples = [
        torch.randn(n, *config.input_shape, generator=generator) for n in (2, *PARITY_BATCH_SIZES)
    ]
    with atomic_write(path) as scratch:
        try:
            _WRITERS[fmt](module, samples[0], scratch, opset)
        except Exception as err:
            raise FailedPrecondition(f"{fmt} export failed: {type(err).__name__}: {err}") from err
        artifact = _open(fmt, scratch)
        worst = 0.0
        with torch.inference_mode():
            for sample in samples[1:]:
                expected = module(sample).float().numpy()
                worst = max(worst, float(np.abs(artifact.run(sample.numpy()) - expected).max()))
        if not worst <= tolerance:
            raise FailedPrecondition(
                f"{fmt} parity check failed: max abs diff {worst:.3g} "
                f"from eager PyTorch exceeds tolerance {tolerance:g}"
            )
    return ExportResult(
        fmt,
        path,
        path.stat().st_size,
        sha256_of(path),
        opset if fmt == ONNX else 0,
        worst,
        PARITY_BATCH_SIZES,
    )
