"""The v2 protocol's system shared memory against plain gRPC: a batch of 64 images of 3x224x224
(float32, 38.5 MB) sent by a client on the same host, through a model cheap enough that the
figure is the transport's."""

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.harness import server_process, summary
from bench.serving import bare_grpc
from torchwire.client import Client
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc

MODEL = "shm-probe"
BATCH = 64
SHAPE = (3, 224, 224)
CLASSES = [f"class-{i}" for i in range(10)]
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""Above the batch's 38.5 MB, on the server and on the client's channel."""
MIN_ROUNDS = 20
VARIANTS = ("plain gRPC", "shm inputs", "shm inputs + outputs")


class Probe(torch.nn.Module):
    """AdaptiveAvgPool2d(4) at 224x224 (the mean of each 56x56 block), then one linear layer
    to 10 classes: it reads every input value once and costs next to nothing else. Written
    as a reshape and a mean, which ONNX Runtime runs (ReduceMean) about 3x faster than the
    AveragePool that AdaptiveAvgPool2d exports to."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, len(CLASSES))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        blocks = input.reshape(input.shape[0], 3, 4, SHAPE[1] // 4, 4, SHAPE[2] // 4)
        return self.fc(blocks.mean((3, 5)).flatten(1))


def export_model(path: Path) -> Path:
    """The probe model as a self-contained ONNX file with a dynamic batch dimension."""
    torch.manual_seed(0)
    torch.onnx.export(
        Probe().eval(),
        (torch.zeros(2, *SHAPE),),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    return path


@contextmanager
def _region(stub: v2_grpc.GRPCInferenceServiceStub, name: str, size: int) -> Iterator[SharedMemory]:
    """A POSIX shared-memory object registered as region `name`; unregistered, unlinked and
    closed on the way out, whatever happened."""
    memory = SharedMemory(name=f"torchwire-bench-{os.getpid()}-{name}", create=True, size=size)
    registered = False
    try:
        stub.SystemSharedMemoryRegister(
            v2.SystemSharedMemoryRegisterRequest(
                name=name, key="/" + memory.name, offset=0, byte_size=size
            )
        )
        registered = True
        yield memory
    finally:
        try:
            if registered:
                stub.SystemSharedMemoryUnregister(v2.SystemSharedMemoryUnregisterRequest(name=name))
        finally:
            memory.unlink()
            with suppress(BufferError):  # a view still held (by an exception's frames)
                memory.close()


def _request(
    shape: tuple[int, ...],
    raw: bytes | None = None,
    window: tuple[str, int] | None = None,
    out_window: tuple[str, int] | None = None,
) -> v2.ModelInferRequest:
    """ModelInfer of the "input" batch (raw bytes, or a shared-memory region's name and
    size), asking for "output" (in the response, or written to a region)."""
    request = v2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(shape))
    if raw is not None:
        request.raw_input_contents.append(raw)
    if window is not None:
        _point(tensor.parameters, *window)
    output = request.outputs.add(name="output")
    if out_window is not None:
        _point(output.parameters, *out_window)
    return request


def _point(parameters: Any, region: str, byte_size: int) -> None:
    """A tensor's parameters naming the start of a shared-memory region."""
    parameters["shared_memory_region"].string_param = region
    parameters["shared_memory_byte_size"].int64_param = byte_size
    parameters["shared_memory_offset"].int64_param = 0


def _median_ms(call: Callable[[], object], times: int = MIN_ROUNDS) -> float:
    call()
    latencies = []
    for _ in range(times):
        begin = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - begin)
    return 1000 * statistics.median(latencies)


def _compute(stub: v2_grpc.GRPCInferenceServiceStub) -> tuple[int, int]:
    """The model's runs so far, and the nanoseconds they took, as the server counts them."""
    stats = stub.ModelStatistics(v2.ModelStatisticsRequest(name=MODEL)).model_stats[0]
    return stats.inference_stats.compute_infer.count, stats.inference_stats.compute_infer.ns


def _measure(stub: v2_grpc.GRPCInferenceServiceStub, seconds: float) -> dict:
    batch = np.random.default_rng(0).random((BATCH, *SHAPE), dtype=np.float32)
    out_bytes = BATCH * len(CLASSES) * 4
    with (
        _region(stub, "bench-in", batch.nbytes) as ins,
        _region(stub, "bench-out", out_bytes) as outs,
    ):
        before = _compute(stub)
        latencies, rounds, copy_ms = _timed(stub, batch, ins, outs, seconds)
        after = _compute(stub)
    # The server's own account of its model runs during the timed rounds (ModelStatistics).
    compute_ms = 1e-6 * (after[1] - before[1]) / max(1, after[0] - before[0])
    plain = _request(batch.shape, raw=batch.tobytes())
    floor = bare_grpc(plain, stub.ModelInfer(plain).ByteSize(), seconds, BATCH)
    tobytes_ms = _median_ms(batch.tobytes)
    rows = [{"variant": name, **summary(times, BATCH)} for name, times in latencies.items()]
    for row in rows:
        row["vs_plain"] = row["p50_ms"] / rows[0]["p50_ms"]
    return {
        "rows": rows,
        "rounds": rounds,
        "bare_grpc_p50_ms": floor["p50_ms"],
        "megabytes": batch.nbytes / 1e6,
        "copy_ms": copy_ms,
        "tobytes_ms": tobytes_ms,
        "compute_ms": compute_ms,
    }


def _timed(
    stub: v2_grpc.GRPCInferenceServiceStub,
    batch: np.ndarray,
    ins: SharedMemory,
    outs: SharedMemory,
    seconds: float,
) -> tuple[dict[str, list[float]], int, float]:
    """Each variant's latencies (s), the rounds run, and the median memcpy of the batch into
    the input region (ms). The views of the regions live only here, so that they can close."""
    out_shape = (BATCH, len(CLASSES))
    staged = np.ndarray(batch.shape, np.float32, ins.buf)
    written = np.ndarray(out_shape, np.float32, outs.buf)
    in_window = ("bench-in", batch.nbytes)

    def plain() -> np.ndarray:
        response = stub.ModelInfer(_request(batch.shape, raw=batch.tobytes()))
        return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(out_shape)

    def shm_inputs() -> np.ndarray:
        np.copyto(staged, batch)  # what a client producing new data pays
        response = stub.ModelInfer(_request(batch.shape, window=in_window))
        return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(out_shape)

    def shm_both() -> np.ndarray:
        np.copyto(staged, batch)
        response = stub.ModelInfer(
            _request(batch.shape, window=in_window, out_window=("bench-out", written.nbytes))
        )
        # The output's place in raw_output_contents is absent or empty, by server version.
        assert not any(response.raw_output_contents), "the output came back inline"
        assert response.outputs[0].parameters["shared_memory_region"].string_param == "bench-out"
        return written.copy()

    calls = dict(zip(VARIANTS, (plain, shm_inputs, shm_both), strict=True))
    # Warm-up; and the three ways must give the same answer.
    for _ in range(3):
        answers = [call() for call in calls.values()]
    for answer in answers[1:]:
        np.testing.assert_allclose(answer, answers[0], rtol=1e-6, atol=1e-6)
    # Interleaved rounds, each in a rotated order, so that the machine's drift falls on every
    # variant alike.
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    deadline = time.perf_counter() + len(calls) * seconds
    rounds = 0
    while time.perf_counter() < deadline or rounds < MIN_ROUNDS:
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            begin = time.perf_counter()
            calls[name]()
            latencies[name].append(time.perf_counter() - begin)
        rounds += 1
    return latencies, rounds, _median_ms(lambda: np.copyto(staged, batch))


def run(seconds: float) -> dict:
    """A server of its own (message limit MAX_MESSAGE_BYTES), the probe model imported, then
    the three ways of sending the batch, side by side."""
    with tempfile.TemporaryDirectory(prefix="torchwire-bench-shm-") as tmp:
        path = export_model(Path(tmp) / "probe.onnx")
        flags = ("--max-message-bytes", str(MAX_MESSAGE_BYTES))
        with (
            server_process(Path(tmp) / "store", *flags) as (_, address, _),
            Client(address, max_message_bytes=MAX_MESSAGE_BYTES) as client,
        ):
            client.wait_ready()
            client.import_model(MODEL, path, format="onnx", classes=CLASSES)
            stub = v2_grpc.GRPCInferenceServiceStub(client.channel)
            return _measure(stub, seconds)
