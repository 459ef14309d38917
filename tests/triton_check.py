"""Calls a torchwire server with Triton's own client, over gRPC and over HTTP, and prints what
it got as one JSON document on stdout; tests/test_v2_triton.py compares it with torchwire's
Predict.

Run by a Python that has tritonclient[grpc,http] and numpy, and not torchwire:

    python triton_check.py GRPC_ADDRESS HTTP_ADDRESS DIGITS_MODEL IMAGE_MODEL INPUTS.npy IMAGE.png

GRPC_ADDRESS and HTTP_ADDRESS are host:port. DIGITS_MODEL takes "input" FP32 [n, 1, 8, 8]
(INPUTS.npy) and answers "output", "probabilities" and "class"; IMAGE_MODEL takes encoded
images as a BYTES input (IMAGE.png). For each protocol the document holds:

    live, ready          is_server_live, is_model_ready(DIGITS_MODEL)
    metadata, config     get_model_metadata, get_model_config (the ModelConfig itself)
    infer                the digits batch: each output's datatype, shape and values
    image                the PNG sent as BYTES: the image model's outputs
    bad_input            the error of an infer naming a wrong input
    shm                  the digits batch in and out through system shared memory: the
                         regions the server lists, the outputs read back from them, and the
                         regions left after unregistering
    shm_mixed            "output" in shared memory, "class" in the response, one request
    statistics, index    get_inference_statistics(DIGITS_MODEL), get_model_repository_index

and "stream" (gRPC only): one ModelStreamInfer stream's answers in the order they came.

Values are kept as the clients return them (gRPC's int64 fields are JSON strings); the test
reads them with int(). Shared-memory keys and region names carry the process id, and the
regions are unregistered and destroyed whatever happens.
"""

import argparse
import json
import os
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

OUTPUTS = ("output", "probabilities", "class")
"""The digits model's outputs, in the order the test reads them."""
FIRST_ANSWER_SECONDS = 10.0
"""How long the stream's first request may take to be answered while the stream stays open."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("grpc_address", help="host:port of torchwire's gRPC port")
    parser.add_argument("http_address", help="host:port of torchwire's REST port")
    parser.add_argument("digits_model", help="a model taking FP32 [n, 1, 8, 8]")
    parser.add_argument("image_model", help="a model trained on image files")
    parser.add_argument("inputs", type=Path, help=".npy of the digits batch")
    parser.add_argument("image", type=Path, help="a PNG file for the image model")
    return parser.parse_args()


def response_of(result: Any) -> dict[str, Any]:
    """An InferResult's response as a dict, whichever client made it."""
    if isinstance(result, grpcclient.InferResult):
        return result.get_response(as_json=True)
    return result.get_response()


def tensors(result: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Each named output's datatype, shape (from the response) and values (as_numpy)."""
    described = {o["name"]: o for o in response_of(result)["outputs"]}
    return {
        name: {
            "datatype": described[name]["datatype"],
            "shape": [int(d) for d in described[name]["shape"]],
            "data": result.as_numpy(name).tolist(),
        }
        for name in names
    }


def digits_input(client_module: Any, batch: np.ndarray, name: str = "input") -> Any:
    infer_input = client_module.InferInput(name, list(batch.shape), "FP32")
    infer_input.set_data_from_numpy(batch)
    return infer_input


def requested_outputs(client_module: Any) -> list[Any]:
    """The three outputs; over HTTP "class" comes back as JSON, the others as binary data."""
    if client_module is httpclient:
        return [httpclient.InferRequestedOutput(n, binary_data=n != "class") for n in OUTPUTS]
    return [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]


def error_text(call: Any) -> str | None:
    """The InferenceServerException's message of `call()`, or None when it succeeds."""
    try:
        call()
    except InferenceServerException as err:
        return err.message()
    return None


def check_protocol(
    client_module: Any, client: Any, args: argparse.Namespace, batch: np.ndarray
) -> dict[str, Any]:
    """Everything but streaming, through one client."""
    is_grpc = client_module is grpcclient
    got: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_model_ready(args.digits_model),
    }
    metadata = client.get_model_metadata(args.digits_model, **({"as_json": True} if is_grpc else {}))
    got["metadata"] = {"inputs": metadata["inputs"], "outputs": metadata["outputs"]}

    result = client.infer(
        args.digits_model,
        [digits_input(client_module, batch)],
        outputs=requested_outputs(client_module),
        request_id="digits-1",
    )
    got["infer"] = tensors(result, OUTPUTS)
    got["infer_id"] = response_of(result).get("id", "")

    # The PNG file's bytes as one BYTES element: shape [1] over gRPC, [1, 1] over HTTP.
    png = args.image.read_bytes()
    images = np.array([png], dtype=np.object_)
    if not is_grpc:
        images = images.reshape(1, 1)
    image_input = client_module.InferInput("input", list(images.shape), "BYTES")
    image_input.set_data_from_numpy(images)
    result = client.infer(args.image_model, [image_input])
    got["image"] = tensors(result, OUTPUTS)

    got["bad_input"] = error_text(
        lambda: client.infer(args.digits_model, [digits_input(client_module, batch, "wrong")])
    )
    got["shm"] = through_shared_memory(client_module, client, args.digits_model, batch)
    got["shm_mixed"] = mixed_shared_memory(client_module, client, args.digits_model, batch)

    # After the inferences, so that the statistics count them.
    json_kwargs = {"as_json": True} if is_grpc else {}
    config = client.get_model_config(args.digits_model, **json_kwargs)
    got["config"] = config["config"] if is_grpc else config
    got["statistics"] = client.get_inference_statistics(args.digits_model, **json_kwargs)
    index = client.get_model_repository_index(**json_kwargs)
    got["index"] = index.get("models", []) if is_grpc else index
    return got


class Regions:
    """System shared-memory regions made here and registered with the server; `close`
    unregisters and destroys every one of them, whatever state they reached."""

    def __init__(self, client: Any, protocol: str) -> None:
        self.client = client
        self.prefix = f"tw-{os.getpid()}-{protocol}"
        self.handles: dict[str, Any] = {}
        self.registered: list[str] = []

    def create(self, name: str, byte_size: int) -> tuple[str, Any]:
        """A new region `prefix-name` of `byte_size` bytes, registered with the server."""
        region = f"{self.prefix}-{name}"
        key = "/" + region.replace("-", "_")
        self.handles[region] = shm.create_shared_memory_region(
            region, key, byte_size, create_only=True
        )
        self.client.register_system_shared_memory(region, key, byte_size)
        self.registered.append(region)
        return region, self.handles[region]

    def status(self) -> list[dict[str, Any]]:
        """The server's status of this object's regions, as {name, key, offset, byte_size}."""
        status = self.client.get_system_shared_memory_status(
            **({"as_json": True} if isinstance(self.client, grpcclient.InferenceServerClient) else {})
        )
        entries = list(status.get("regions", {}).values()) if isinstance(status, dict) else status
        return sorted(
            (
                {k: entry.get(k, 0) for k in ("name", "key", "offset", "byte_size")}
                for entry in entries
                if entry["name"].startswith(self.prefix)
            ),
            key=lambda entry: entry["name"],
        )

    def close(self) -> None:
        while self.registered:
            region = self.registered.pop()
            try:
                self.client.unregister_system_shared_memory(region)
            except InferenceServerException as err:
                print(f"unregistering {region}: {err}", file=sys.stderr)
        for handle in self.handles.values():
            shm.destroy_shared_memory_region(handle)
        self.handles.clear()


def output_layout(n: int, classes: int) -> dict[str, tuple[str, np.dtype, list[int], int]]:
    """Where each output goes in one output region: name -> (datatype, dtype, shape, offset)."""
    layout, offset = {}, 0
    for name, datatype, dtype, width in (
        ("output", "FP32", np.dtype(np.float32), classes),
        ("probabilities", "FP32", np.dtype(np.float32), classes),
        ("class", "INT64", np.dtype(np.int64), 1),
    ):
        layout[name] = (datatype, dtype, [n, width], offset)
        offset += n * width * dtype.itemsize
    return layout


def through_shared_memory(
    client_module: Any, client: Any, model: str, batch: np.ndarray
) -> dict[str, Any]:
    """The batch read from one region, the three outputs written to another."""
    regions = Regions(client, client_module.__name__.rpartition(".")[2])
    try:
        layout = output_layout(len(batch), 10)
        out_size = sum(
            int(np.prod(shape)) * dtype.itemsize for _, dtype, shape, _ in layout.values()
        )
        in_region, in_handle = regions.create("in", batch.nbytes)
        out_region, out_handle = regions.create("out", out_size)
        shm.set_shared_memory_region(in_handle, [batch])
        registered = regions.status()

        infer_input = client_module.InferInput("input", list(batch.shape), "FP32")
        infer_input.set_shared_memory(in_region, batch.nbytes)
        outputs = []
        for name, (_, dtype, shape, offset) in layout.items():
            output = client_module.InferRequestedOutput(name)
            output.set_shared_memory(out_region, int(np.prod(shape)) * dtype.itemsize, offset)
            outputs.append(output)
        result = client.infer(model, [infer_input], outputs=outputs)

        described = {o["name"]: o for o in response_of(result)["outputs"]}
        got: dict[str, Any] = {"registered": registered, "outputs": {}}
        for name, (datatype, dtype, shape, offset) in layout.items():
            got["outputs"][name] = {
                "datatype": described[name]["datatype"],
                "shape": [int(d) for d in described[name]["shape"]],
                "parameters": described[name].get("parameters", {}),
                "data": shm.get_contents_as_numpy(out_handle, dtype, shape, offset).tolist(),
            }
    finally:
        regions.close()
    got["after_unregister"] = regions.status()
    return got


def mixed_shared_memory(
    client_module: Any, client: Any, model: str, batch: np.ndarray
) -> dict[str, Any]:
    """One request, "output" written to shared memory and "class" carried in the response:
    what as_numpy("class") reads."""
    regions = Regions(client, client_module.__name__.rpartition(".")[2] + "-mixed")
    try:
        size = batch.shape[0] * 10 * 4
        region, handle = regions.create("out", size)
        outputs = [client_module.InferRequestedOutput("output"), requested_class(client_module)]
        outputs[0].set_shared_memory(region, size)
        result = client.infer(model, [digits_input(client_module, batch)], outputs=outputs)
        got: dict[str, Any] = {
            "output": shm.get_contents_as_numpy(handle, np.float32, [len(batch), 10]).tolist(),
            "class": None,
            "class_error": None,
        }
        try:
            got["class"] = result.as_numpy("class").tolist()
        except ValueError as err:  # a response whose raw contents skip the shm output
            got["class_error"] = f"as_numpy('class'): {err}"
    finally:
        regions.close()
    return got


def requested_class(client_module: Any) -> Any:
    if client_module is httpclient:
        return httpclient.InferRequestedOutput("class", binary_data=True)
    return grpcclient.InferRequestedOutput("class")


def stream(client: Any, model: str, batch: np.ndarray) -> dict[str, Any]:
    """Five requests on one ModelStreamInfer stream, the third naming a wrong input.

    The first is sent alone, and its answer awaited (for up to FIRST_ANSWER_SECONDS) before
    the others follow: a server that answers only after more requests arrive or the stream
    half-closes makes such a client wait. Then stop_stream half-closes and waits for the rest.
    """
    answers: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_answer(result: Any, error: InferenceServerException | None) -> None:
        if error is not None:
            answers.put({"error": error.message()})
        else:
            answer = tensors(result, ("output", "class"))
            answers.put({"id": response_of(result).get("id", ""), **answer})

    sent = []
    client.start_stream(callback=on_answer)
    try:
        for i in range(5):
            rows = batch[i : i + 1]
            name = "wrong" if i == 2 else "input"
            client.async_stream_infer(
                model, [digits_input(grpcclient, rows, name)], request_id=f"stream-{i}"
            )
            sent.append({"id": f"stream-{i}", "row": i, "input": name})
            if i == 0:
                try:
                    first = [answers.get(timeout=FIRST_ANSWER_SECONDS)]
                except queue.Empty:
                    first = []
    finally:
        client.stop_stream()
    rest = []
    while not answers.empty():
        rest.append(answers.get_nowait())
    return {
        "sent": sent,
        "first_answered_while_open": bool(first),
        "answers": first + rest,
    }


def main() -> None:
    args = parse_args()
    assert not any(name.startswith("torchwire") for name in sys.modules)
    batch = np.ascontiguousarray(np.load(args.inputs), dtype=np.float32)
    report: dict[str, Any] = {}
    with grpcclient.InferenceServerClient(args.grpc_address) as client:
        report["grpc"] = check_protocol(grpcclient, client, args, batch)
        report["stream"] = stream(client, args.digits_model, batch)
    http = httpclient.InferenceServerClient(args.http_address)
    try:
        report["http"] = check_protocol(httpclient, http, args, batch)
    finally:
        http.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
