"""Inference runtimes: eager PyTorch, TorchScript (in this process, or in a child process for
an imported file) and ONNX Runtime behind one `run(batch)`, and the post-processing (softmax,
top-k) that they share."""

import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchwire.service.core.buckets import Executor, HostExecutor
from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.formats import ONNXRUNTIME, TORCHSCRIPT
from torchwire.service.core.isolation import Child, Handler
from torchwire.service.errors import FailedPrecondition

log = logging.getLogger(__name__)

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RuntimeOptions:
    """How runtimes run, server-wide.

    Attributes:
        intra_op_threads: ONNX Runtime's intra-op threads; 0 lets it choose.
        cudnn_conv_algo_search: ONNX Runtime on CUDA: how cuDNN picks a convolution
            algorithm for a shape (EXHAUSTIVE: measures them all, once per shape).
        tf32: CUDA: let matmuls and convolutions use TF32 (ONNX Runtime and PyTorch).
        cuda_graphs: eager and TorchScript on CUDA: capture each bucket's run as a CUDA
            graph, replayed with one launch.
        precision: eager and TorchScript: "fp32", or "fp16" / "bf16" weights and math.
    """

    intra_op_threads: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    tf32: bool = False
    cuda_graphs: bool = False
    precision: str = "fp32"


DEFAULT_OPTIONS = RuntimeOptions()


def apply_tf32(options: RuntimeOptions) -> None:
    """Sets PyTorch's TF32 switches for this process's inference on CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = options.tf32
    torch.backends.cudnn.allow_tf32 = options.tf32


# Request tensors are zero-copy views of the received bytes, hence read-only; the
# runtimes only read their inputs, so torch's warning about that is noise here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class TorchRuntime:
    """Runs an `nn.Module` (eager) or a `torch.jit.ScriptModule` in eval mode on a device,
    in float32 or, with `options.precision`, in float16 or bfloat16 (floating inputs are cast
    to it; outputs come back as float32)."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        device: torch.device,
        options: RuntimeOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.name = name
        self.half = PRECISIONS[options.precision] if options.precision != "fp32" else None
        self.module = module.eval() if self.half is None else module.eval().to(self.half)
        self.device = device
        self.options = options
        self.placement = str(device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The module on inputs already on the device: floating ones cast to the half
        precision first (on the device), float32 outputs."""
        if self.half is not None and inputs.is_floating_point():
            inputs = inputs.to(self.half)
        return self.module(inputs).float()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for `batch`, as float32 on the CPU."""
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            return self.forward(inputs).cpu().numpy()

    def executor(self, inputs: np.ndarray) -> Executor:
        """An executor for batches shaped like `inputs`: on CUDA, through pinned buffers and
        (with `options.cuda_graphs`) a CUDA graph."""
        if self.device.type != "cuda":
            return HostExecutor(self.run, inputs)
        return CudaTorchExecutor(self, inputs, self.options.cuda_graphs)

    def size_bytes(self) -> int:
        """Bytes of parameters and buffers: what keeping it loaded costs."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def close(self) -> None:
        """Nothing to release but memory."""


_CAPTURE_LOCK = threading.Lock()
"""One CUDA graph capture at a time in this process (loads of different models run
concurrently)."""


class CudaTorchExecutor:
    """One batch size of a module on CUDA: inputs written into pinned host memory, copied to
    a device buffer of the same dtype that never moves (a half-precision cast happens on the
    device), outputs copied back into pinned memory; with `graph`, the forward pass is
    captured once as a CUDA graph and replayed."""

    def __init__(self, runtime: TorchRuntime, template: np.ndarray, graph: bool) -> None:
        self._runtime, self._device = runtime, runtime.device
        self._host = torch.from_numpy(template).pin_memory()
        self.inputs = self._host.numpy()
        self._device_inputs = torch.empty_like(self._host, device=self._device)
        self._host_outputs: torch.Tensor | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_outputs: torch.Tensor | None = None
        if graph:
            self._capture()

    def _capture(self) -> None:
        """Warms up on a side stream (as CUDA graph capture requires), then captures on it.
        Capture is thread-local, so that other threads' CUDA work (other models' runs and
        loads) neither breaks it nor is refused while it lasts."""
        with _CAPTURE_LOCK, torch.cuda.device(self._device), torch.inference_mode():
            side = torch.cuda.Stream(self._device)
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._runtime.forward(self._device_inputs)
            torch.cuda.current_stream(self._device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                self._graph_outputs = self._runtime.forward(self._device_inputs)
            self._graph = graph

    def run(self) -> np.ndarray:
        with torch.inference_mode():
            self._device_inputs.copy_(self._host, non_blocking=True)
            if self._graph is not None and self._graph_outputs is not None:
                self._graph.replay()
                outputs = self._graph_outputs
            else:
                outputs = self._runtime.forward(self._device_inputs)
            if self._host_outputs is None:
                self._host_outputs = torch.empty(outputs.shape, pin_memory=True)
            self._host_outputs.copy_(outputs, non_blocking=True)
            torch.cuda.current_stream(self._device).synchronize()
        return self._host_outputs.numpy()


def load_torchscript(
    path: Path, device: torch.device, options: RuntimeOptions = DEFAULT_OPTIONS
) -> TorchRuntime:
    """Loads a TorchScript artifact."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        module = torch.jit.load(str(path), map_location=device)
    return TorchRuntime(TORCHSCRIPT, module, device, options)


def onnx_session(
    path: Path,
    device: torch.device,
    options: RuntimeOptions = DEFAULT_OPTIONS,
    batch_size: tuple[str, int] | None = None,
    initializers: dict[str, Any] | None = None,
):
    """Opens an ONNX Runtime session, on CUDA only when asked for and really used.

    onnxruntime-gpu lists the CUDA provider as available even without a GPU and
    silently falls back to the CPU; the providers the session really got are checked.

    Args:
        path: the ONNX file.
        device: "cuda" (the CUDA provider on that GPU) or "cpu".
        options: threads, and the CUDA provider's cuDNN search and TF32.
        batch_size: (dimension name, size) fixes a symbolic batch dimension: the session
            is planned for that one shape.
        initializers: OrtValues to use instead of the file's weights of those names (shared
            between the sessions of one model).

    Raises:
        FailedPrecondition: CUDA was asked for but the session fell back to the CPU.
    """
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = 1
    if batch_size is not None:
        session_options.add_free_dimension_override_by_name(*batch_size)
    for name, value in (initializers or {}).items():
        session_options.add_initializer(name, value)
    providers: list[Any] = [CPU_PROVIDER]
    if device.type == "cuda":
        cuda = {
            "device_id": str(device.index or 0),
            "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
            "use_tf32": str(int(options.tf32)),
        }
        providers.insert(0, (CUDA_PROVIDER, cuda))
    session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
    if device.type == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
        raise FailedPrecondition(
            f"ONNX Runtime was asked for {CUDA_PROVIDER} but fell back to "
            f"{session.get_providers()}; check the CUDA and cuDNN libraries"
        )
    return session


class OnnxRuntime:
    """Runs an ONNX artifact in ONNX Runtime; on CUDA the output stays bound to the device.

    `executor` opens one more session per batch size, planned for that shape alone. On CUDA
    those sessions use one copy of the weights on the device (`SessionOptions.add_initializer`)
    instead of each uploading its own. On the CPU each keeps its own: measured with resnet18,
    shared weights saved nothing there (ONNX Runtime prepacks convolution weights per session,
    and most of a session's memory is its arena)."""

    name = ONNXRUNTIME

    def __init__(
        self, path: Path, device: torch.device, options: RuntimeOptions = DEFAULT_OPTIONS
    ) -> None:
        self.path, self.device, self.options = path, device, options
        self.session = onnx_session(path, device, options)
        self.input_name = self.session.get_inputs()[0].name
        self.batch_dimension = self.session.get_inputs()[0].shape[0]
        self.placement = self.session.get_providers()[0]
        self.use_cuda = device.type == "cuda"
        self._size = path.stat().st_size
        self._weights: dict[str, Any] | None = None
        self._owned: dict[str, torch.Tensor] = {}  # the memory behind `_weights`
        self._copies = 1  # sessions holding weights of their own
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for `batch`, as float32 on the CPU."""
        if not self.use_cuda:
            return _run_on_cpu(self.session, self.input_name, batch)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        binding.bind_output(self.session.get_outputs()[0].name, "cuda")
        self.session.run_with_iobinding(binding)
        return _float32(binding.copy_outputs_to_cpu()[0])

    def _shared_weights(self) -> dict[str, Any]:
        """The file's floating-point initializers as OrtValues on this runtime's device, made
        once. `add_initializer` takes only memory the caller owns: each is a torch tensor on
        the device, handed over through DLPack and kept alive here. (Integer initializers,
        such as Reshape's shapes, live on the CPU in ONNX Runtime: they are not shared.)"""
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        with self._lock:
            if self._weights is None:
                tensors = {
                    tensor.name: torch.from_numpy(
                        np.array(numpy_helper.to_array(tensor), copy=True)
                    ).to(self.device)
                    for tensor in onnx.load(str(self.path)).graph.initializer
                }
                self._owned = {k: t for k, t in tensors.items() if t.is_floating_point()}
                self._weights = {k: ort.OrtValue.from_dlpack(t) for k, t in self._owned.items()}
            return self._weights

    def executor(self, inputs: np.ndarray) -> Executor:
        """An executor for batches shaped like `inputs`, on a session of its own planned for
        that shape (when the file's batch dimension is symbolic; a fixed one is kept)."""
        if not isinstance(self.batch_dimension, str):
            return HostExecutor(self.run, inputs)
        fixed = (self.batch_dimension, len(inputs))
        session = None
        if self.use_cuda:
            try:
                session = onnx_session(
                    self.path, self.device, self.options, fixed, self._shared_weights()
                )
            except FailedPrecondition:
                raise
            except Exception as err:  # ONNX Runtime refused the shared weights
                log.warning("%s: weights not shared between bucket sessions: %s", self.path, err)
        if session is None:
            session = onnx_session(self.path, self.device, self.options, fixed)
            self._copies += 1
        if not self.use_cuda:
            return HostExecutor(lambda batch: _run_on_cpu(session, self.input_name, batch), inputs)
        return CudaOnnxExecutor(session, inputs, self.device)

    def size_bytes(self) -> int:
        """About the weights' size: the self-contained file's size, once for each session
        that holds a copy of its own (bucket sessions on the CPU do)."""
        return self._size * self._copies

    def close(self) -> None:
        """The session goes with its last reference."""


def _float32(output: np.ndarray) -> np.ndarray:
    return output.astype(np.float32, copy=False)  # an imported model may give float16


def _run_on_cpu(session: Any, input_name: str, batch: np.ndarray) -> np.ndarray:
    """A CPU session's float32 outputs for `batch`."""
    return _float32(session.run(None, {input_name: batch})[0])


class CudaOnnxExecutor:
    """One batch size of an ONNX Runtime session on CUDA: inputs written into pinned host
    memory and copied into a device buffer bound once (IOBinding); outputs stay on the device
    until copied back."""

    def __init__(self, session: Any, template: np.ndarray, device: torch.device) -> None:
        import onnxruntime as ort

        self._session = session
        self._host = torch.from_numpy(template).pin_memory()
        self.inputs = self._host.numpy()
        index = device.index or 0
        self._device_inputs = ort.OrtValue.ortvalue_from_numpy(self.inputs, "cuda", index)
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(session.get_inputs()[0].name, self._device_inputs)
        self._binding.bind_output(session.get_outputs()[0].name, "cuda", index)

    def run(self) -> np.ndarray:
        self._device_inputs.update_inplace(self.inputs)
        self._session.run_with_iobinding(self._binding)
        return _float32(self._binding.copy_outputs_to_cpu()[0])


LOAD_TIMEOUT_S = 300.0
"""How long a child may take to load a TorchScript file."""
RUN_TIMEOUT_S = 300.0
"""How long one run in a child may take before the child is stopped."""


def torchscript_child(path: str, device: str) -> tuple[dict, Handler]:
    """In the child: loads a TorchScript file on the CPU in eval mode, moves it to `device`,
    and answers batches (dtype and shape, then the raw bytes) with float32 outputs."""
    place = torch.device(device)
    module = load_torchscript(Path(path), torch.device("cpu")).module.to(place)

    def run(request: dict, payload: bytes) -> tuple[dict, bytes]:
        batch = np.frombuffer(payload, np.dtype(request["dtype"])).reshape(request["shape"])
        with torch.inference_mode():
            output = module(torch.from_numpy(batch).to(place))
        if not isinstance(output, torch.Tensor):
            raise FailedPrecondition(
                f"the TorchScript module returned a {type(output).__name__}, not a tensor"
            )
        array = np.ascontiguousarray(output.float().cpu().numpy())
        return {"shape": list(array.shape)}, array.tobytes()

    return {}, run


class IsolatedTorchScript:
    """A TorchScript file torchwire did not write (an import), loaded and run in a child
    process (`core.isolation`): its code never runs in the server. A child that dies is
    started again on the next run."""

    name = TORCHSCRIPT

    def __init__(self, path: Path, device: torch.device, label: str) -> None:
        self._args = (str(path), str(device))
        self._label = label
        self._lock = threading.Lock()
        self._child = self._start()
        self.placement = str(device)
        self._size = path.stat().st_size

    def _start(self) -> Child:
        return Child(self._label, torchscript_child, self._args, LOAD_TIMEOUT_S)

    def executor(self, inputs: np.ndarray) -> Executor:
        """Batches shaped like `inputs`, sent to the child (whose device sees one shape)."""
        return HostExecutor(self.run, inputs)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for `batch`, as float32, computed in the child."""
        with self._lock:
            if not self._child.alive:
                log.warning("%s had exited; starting it again", self._label)
                self._child = self._start()
            child = self._child
        batch = np.ascontiguousarray(batch)
        header, data = child.call(
            {"dtype": batch.dtype.str, "shape": list(batch.shape)},
            batch.reshape(-1).view(np.uint8),
            RUN_TIMEOUT_S,
        )
        return np.frombuffer(data, np.float32).reshape(header["shape"])

    def size_bytes(self) -> int:
        """About the weights' size: the file's size."""
        return self._size

    def close(self) -> None:
        """Stops the child."""
        self._child.close()


Runtime = TorchRuntime | OnnxRuntime | IsolatedTorchScript


class _RunnerModule(nn.Module):
    """A runtime that is not a module, as one: tensors in and out through `run`."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output = self.runtime.run(inputs.cpu().numpy())
        return torch.from_numpy(np.array(output, copy=True)).to(inputs.device)


def as_module(runtime: Runtime) -> nn.Module:
    """The runtime as an `nn.Module` (for evaluation): its own module for eager PyTorch and
    TorchScript, an adapter around `run` for the others."""
    return runtime.module if isinstance(runtime, TorchRuntime) else _RunnerModule(runtime)


@dataclass(frozen=True)
class Prediction:
    """Outputs for a batch, in input order; output fields are None when not asked for."""

    runtime: str
    placement: str
    batch_sizes: list[int] = field(default_factory=list)
    raw: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    top_indices: np.ndarray | None = None
    top_probabilities: np.ndarray | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def postprocess(
    raw: np.ndarray, task: str, want_raw: bool, want_probabilities: bool, top_k: int
) -> dict[str, np.ndarray | None]:
    """The asked-for outputs from raw model outputs: probabilities and the top-k classes.

    A classifier with a single logit (bce_with_logits) has two classes: its probabilities
    are [1 - sigmoid, sigmoid].
    """
    outputs: dict[str, np.ndarray | None] = {"raw": raw if want_raw else None}
    if task != CLASSIFICATION or not (want_probabilities or top_k):
        return outputs
    if raw.shape[1] == 1:
        positive = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
        probabilities = np.concatenate([1 - positive, positive], axis=1).astype(np.float32)
    else:
        probabilities = softmax(raw)
    if want_probabilities:
        outputs["probabilities"] = probabilities
    if top_k:
        k = min(top_k, probabilities.shape[1])
        indices = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        outputs["top_indices"] = indices
        outputs["top_probabilities"] = np.take_along_axis(probabilities, indices, axis=1)
    return outputs
