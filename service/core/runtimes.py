"""Inference runtimes: eager PyTorch, TorchScript (in this process, or in a child process for
an imported file) and ONNX Runtime behind one `run(batch)`, and the post-processing (softmax,
top-k) that they share."""

import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchwire.service.core.datasets import CLASSIFICATION
from torchwire.service.core.formats import ONNXRUNTIME, TORCHSCRIPT
from torchwire.service.core.isolation import Child, Handler
from torchwire.service.errors import FailedPrecondition

log = logging.getLogger(__name__)

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"

# Request tensors are zero-copy views of the received bytes, hence read-only; the
# runtimes only read their inputs, so torch's warning about that is noise here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class TorchRuntime:
    """Runs an `nn.Module` (eager) or a `torch.jit.ScriptModule` in eval mode on a device."""

    def __init__(self, name: str, module: nn.Module, device: torch.device) -> None:
        self.name = name
        self.module = module.eval()
        self.device = device
        self.placement = str(device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for `batch`, as float32 on the CPU."""
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            return self.module(inputs).float().cpu().numpy()

    def size_bytes(self) -> int:
        """Bytes of parameters and buffers: what keeping it loaded costs."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def close(self) -> None:
        """Nothing to release but memory."""


def load_torchscript(path: Path, device: torch.device) -> TorchRuntime:
    """Loads a TorchScript artifact."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        module = torch.jit.load(str(path), map_location=device)
    return TorchRuntime(TORCHSCRIPT, module, device)


def onnx_session(path: Path, use_cuda: bool, intra_op_threads: int = 0):
    """Opens an ONNX Runtime session, on CUDA only when asked for and really used.

    onnxruntime-gpu lists the CUDA provider as available even without a GPU and
    silently falls back to the CPU; the providers the session really got are checked.

    Raises:
        FailedPrecondition: CUDA was asked for but the session fell back to the CPU.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if use_cuda else [CPU_PROVIDER]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if use_cuda and session.get_providers()[0] != CUDA_PROVIDER:
        raise FailedPrecondition(
            f"ONNX Runtime was asked for {CUDA_PROVIDER} but fell back to "
            f"{session.get_providers()}; check the CUDA and cuDNN libraries"
        )
    return session


class OnnxRuntime:
    """Runs an ONNX artifact in ONNX Runtime; on CUDA the output stays bound to the device."""

    name = ONNXRUNTIME

    def __init__(self, path: Path, use_cuda: bool, intra_op_threads: int = 0) -> None:
        self.session = onnx_session(path, use_cuda, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.placement = self.session.get_providers()[0]
        self.use_cuda = use_cuda
        self._size = path.stat().st_size

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for `batch`, as float32 on the CPU."""
        if not self.use_cuda:
            output = self.session.run(None, {self.input_name: batch})[0]
        else:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
            binding.bind_output(self.session.get_outputs()[0].name, "cuda")
            self.session.run_with_iobinding(binding)
            output = binding.copy_outputs_to_cpu()[0]
        return output.astype(np.float32, copy=False)  # an imported model may give float16

    def size_bytes(self) -> int:
        """About the weights' size: the self-contained file's size."""
        return self._size

    def close(self) -> None:
        """The session goes with its last reference."""


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
