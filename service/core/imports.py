"""What an imported file must be before it becomes a version: an ONNX model that the ONNX
checker, strict shape inference and ONNX Runtime accept, or a state_dict that fits an
architecture exactly; and, for every format, a smoke run on a batch of zeros.

`inspect_onnx` and `convert_state_dict` run in a child process (`core.isolation`): the
server never parses an untrusted file itself. (TorchScript is checked by serving it:
`runtimes.IsolatedTorchScript` and `smoke_run`.)
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchwire.service.core.architectures import ModelConfig
from torchwire.service.core.checkpoint import save_checkpoint
from torchwire.service.core.formats import EAGER
from torchwire.service.core.runtimes import OnnxRuntime, TorchRuntime
from torchwire.service.errors import InvalidArgument, Summary

SMOKE_BATCH = 2
"""Rows of the zero batch every import runs: more than 1, so a frozen batch size shows."""
ONNX_DOMAINS = frozenset(("", "ai.onnx", "ai.onnx.ml", "com.microsoft"))
"""Op domains ONNX Runtime runs (besides a model's own functions)."""
WIRE_DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8", "bool")
"""Input dtypes a request can carry."""
_SHOWN_KEYS = 5


def smoke_run(run: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], dtype: str) -> int:
    """Runs a batch of zeros; returns the output's width.

    Raises:
        InvalidArgument: the run fails, or its output is not [SMOKE_BATCH, k] floats.
    """
    try:
        output = np.asarray(run(np.zeros((SMOKE_BATCH, *shape), dtype)))
    except Exception as err:  # whatever the model raises for this input
        raise InvalidArgument.field(
            "input_shape",
            list(shape),
            f"a batch of {SMOKE_BATCH} zeros of {dtype} fails: {type(err).__name__}: {err}",
        ) from err
    if output.ndim != 2 or output.shape[0] != SMOKE_BATCH or output.dtype.kind != "f":
        raise InvalidArgument.field(
            "file",
            f"output {list(output.shape)} {output.dtype}",
            f"a batch of {SMOKE_BATCH} must give floats of shape [{SMOKE_BATCH}, k] "
            "(logits or values, one row per sample)",
        )
    return int(output.shape[1])


def _onnx_dtype(elem_type: int) -> str:
    from onnx import helper

    try:
        name = helper.tensor_dtype_to_np_dtype(elem_type).name
    except KeyError:
        name = f"ONNX type {elem_type}"
    if name not in WIRE_DTYPES:
        raise InvalidArgument.field("file", name, f"input dtype must be one of {WIRE_DTYPES}")
    return name


def _onnx_input(model: Any, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
    """The one input's sample shape and dtype, reconciled with what the importer declared."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise InvalidArgument.field(
            "file",
            Summary(f"{len(inputs)} inputs, {len(outputs)} outputs"),
            "torchwire serves models with one input and one output tensor",
        )
    tensor = inputs[0].type.tensor_type
    found = _onnx_dtype(tensor.elem_type)
    if dtype and dtype != found:
        raise InvalidArgument.field("input_dtype", dtype, f"the file's input is {found}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    described = [d if d is not None else "?" for d in dims]
    if not dims or dims[0] is not None:
        raise InvalidArgument.field(
            "file",
            f"input {inputs[0].name!r} {described}",
            "the first dimension must be a dynamic batch dimension (export with "
            "dynamic_shapes or dynamic_axes): torchwire batches requests",
        )
    sample = dims[1:]
    if shape:
        conflict = len(shape) != len(sample) or any(
            d is not None and d != s for d, s in zip(sample, shape, strict=False)
        )
        if conflict:
            raise InvalidArgument.field(
                "input_shape",
                list(shape),
                f"conflicts with the file's input {inputs[0].name!r} of shape {described}",
            )
        return shape, found
    if None in sample:
        raise InvalidArgument.field(
            "input_shape",
            [],
            f"the file's input {inputs[0].name!r} is {described}: give input_shape "
            "to fix its symbolic dimensions",
        )
    return tuple(d for d in sample if d is not None), found  # (none is None here)


def _onnx_ops(model: Any) -> None:
    """Refuses ops of domains ONNX Runtime does not run (a model's own functions aside)."""
    functions = {(f.domain, f.name) for f in model.functions}
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    for node in nodes:
        if node.domain not in ONNX_DOMAINS and (node.domain, node.op_type) not in functions:
            raise InvalidArgument.field(
                "file",
                f"op {node.op_type!r} of domain {node.domain!r}",
                f"is a custom op; ONNX Runtime runs the domains {sorted(ONNX_DOMAINS)}",
            )


def inspect_onnx(path: str, file_name: str, shape: list[int], dtype: str) -> tuple[dict, None]:
    """Checks an ONNX file and runs it once; returns its input, output width and opset.

    Raises:
        InvalidArgument: external data, a custom or unknown op, a check or shape inference
            that fails, no dynamic batch dimension, a conflict with `shape` or `dtype`, or a
            smoke run that fails.
    """
    import onnx

    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception as err:
        raise InvalidArgument.field("file", file_name, f"is not an ONNX model: {err}") from err
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise InvalidArgument.field(
            "file",
            file_name,
            f"keeps {len(external)} tensors in external data files (first: {external[0]!r}); "
            "import one self-contained file (torch.onnx.export(..., external_data=False))",
        )
    _onnx_ops(model)
    try:
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as err:
        raise InvalidArgument.field(
            "file", file_name, f"fails the ONNX checker: {type(err).__name__}: {err}"
        ) from err
    input_shape, input_dtype = _onnx_input(model, tuple(shape), dtype)
    try:
        runtime = OnnxRuntime(Path(path), torch.device("cpu"))
    except Exception as err:
        raise InvalidArgument.field(
            "file", file_name, f"ONNX Runtime cannot load it: {type(err).__name__}: {err}"
        ) from err
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return {
        "input_shape": list(input_shape),
        "input_dtype": input_dtype,
        "output_size": smoke_run(runtime.run, input_shape, input_dtype),
        "opset": opset,
    }, None


def _state_dict(loaded: Any, file_name: str) -> dict[str, torch.Tensor]:
    """The mapping of names to tensors in what torch.load returned; a prefix that wrapping
    modules add ("module." of DDP, "_orig_mod." of torch.compile) is dropped."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise InvalidArgument.field(
            "file", file_name, f"holds a {type(loaded).__name__}, not a state_dict"
        )
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        raise InvalidArgument.field(
            "file", file_name, "is not a state_dict: it maps something besides names to tensors"
        )
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in loaded):
            loaded = {k[len(prefix) :]: v for k, v in loaded.items()}
    return loaded


def _match(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str) -> None:
    """Refuses a state_dict whose keys or shapes differ, naming the first offenders."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} is {list(given[k].shape)} in the file, {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {keys[:_SHOWN_KEYS]}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected))
        if keys
    ]
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:_SHOWN_KEYS])}")
    if problems:
        raise InvalidArgument.field("file", what, "does not fit: " + "; ".join(problems))


def convert_state_dict(
    path: str, file_name: str, model_config: dict[str, Any], checkpoint: str
) -> tuple[dict, None]:
    """Loads a state_dict with `weights_only=True` into the architecture of `model_config`
    (an output_size of 0 is read from the last tensor), runs it once, and writes it as a
    torchwire checkpoint to `checkpoint`; returns the output width.

    Raises:
        InvalidArgument: the file is not a state_dict loadable without code, or its keys or
            shapes do not fit the architecture, or the smoke run fails.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InvalidArgument.field(
            "file",
            file_name,
            f"cannot be loaded with torch.load(weights_only=True): {type(err).__name__}: {err}",
        ) from err
    state = _state_dict(loaded, file_name)
    if not model_config["output_size"]:
        last = [t for t in state.values() if t.ndim >= 1]
        model_config = {**model_config, "output_size": int(last[-1].shape[0]) if last else 0}
    config = ModelConfig.from_dict(model_config)
    module = config.build()
    _match(
        module.state_dict(),
        state,
        f"{file_name} for {config.architecture} {config.to_dict()['params']} on inputs "
        f"{list(config.input_shape)} with {config.output_size} outputs",
    )
    module.load_state_dict(state, strict=True)
    runtime = TorchRuntime(EAGER, module, torch.device("cpu"))
    output_size = smoke_run(runtime.run, config.input_shape, "float32")
    save_checkpoint(Path(checkpoint), module, config, epoch=0, metrics={})
    return {"output_size": output_size}, None
