"""Calls a torchwire server with Triton's own client, over gRPC and over HTTP, and prints what
it got as one JSON document on stdout; tests/test_v2_triton.py compares it with torchwire's
Predict.

Run by a Python that has tritonclient[grpc,http] and numpy, and not torchwire:

    python triton_check.py GRPC_ADDRESS HTTP_ADDRESS DIGITS_MODEL IMAGE_MODEL INPUTS.npy IMAGE.png

GRPC_ADDRESS and HTTP_ADDRESS are host:port. DIGITS_MODEL takes "input" FP32 [n, 1, 8, 8]
(INPUTS.npy) and answers "output", "probabilities" and "class"; IMAGE_MODEL takes encoded
images as a BYTES input (IMAGE.png). For each protocol the document holds:

    live, server_ready, ready
                         is_server_live, is_server_ready, is_model_ready(DIGITS_MODEL)
    server               get_server_metadata
    metadata, config     get_model_metadata, get_model_config (the ModelConfig itself)
    infer                the digits batch: each output's datatype, shape and values
    image                the PNG sent as BYTES: the image model's outputs
    bad_input            the error of an infer naming a wrong input
    shm                  the digits batch in and out through system shared memory: the
                         regions the server lists, the outputs read back from them, and the
                         regions left after unregistering
    shm_mixed            one request with "output" in shared memory and "class" in the
                         response: what as_numpy("class") gives, or its error
    statistics, index    get_inference_statistics(DIGITS_MODEL), get_model_repository_index
    compressed           the digits batch again, its body gzip-compressed over HTTP
    priority             the error of an infer with priority=1 (no scheduling extension)
    ready_after_unload   whether the index says READY after unload_model (then load_model)

and "stream" (gRPC only): one ModelStreamInfer stream's answers in the order they came, and
whether the first was answered before the client half-closed the stream.

Values are kept as the clients return them (gRPC's int64 fields are JSON strings); the test
reads them with int(). Shared-memory keys and region names carry the process id, and the
regions are unregistered and destroyed whatever happens.
"""

import argparse
import contextlib
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
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

OUTPUTS = ("output", "probabilities", "class")
"""The digits model's outputs, in the order the test reads them."""
FIRST_ANSWER_SECONDS = 5.0
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
    json_kwargs = {"as_json": True} if is_grpc else {}
    got: dict[str, Any] = {
        "live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "ready": client.is_model_ready(args.digits_model),
        "server": client.get_server_metadata(**json_kwargs),
    }
    metadata = client.get_model_metadata(args.digits_model, **json_kwargs)
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
    outputs = got["metadata"]["outputs"]
    got["shm"] = through_shared_memory(client_module, client, args.digits_model, batch, outputs)
    got["shm_mixed"] = mixed_shared_memory(client_module, client, args.digits_model, batch, outputs)

    # Requests tritonclient shapes in ways of its own: compressed bodies (HTTP), and the
    # parameters of an extension torchwire lacks (priority), which must be refused.
    compression = {} if is_grpc else {"request_compression_algorithm": "gzip"}
    result = client.infer(
        args.digits_model,
        [digits_input(client_module, batch)],
        outputs=requested_outputs(client_module),
        **compression,
    )
    got["compressed"] = tensors(result, OUTPUTS)
    got["priority"] = error_text(
        lambda: client.infer(args.digits_model, [digits_input(client_module, batch)], priority=1)
    )
    # unload_model always sends unload_dependents; the model loads again at load_model.
    client.unload_model(args.digits_model)
    got["ready_after_unload"] = is_loaded(client, args.digits_model, is_grpc)
    client.load_model(args.digits_model)

    # After the inferences, so that the statistics count them.
    config = client.get_model_config(args.digits_model, **json_kwargs)
    got["config"] = config["config"] if is_grpc else config
    got["statistics"] = client.get_inference_statistics(args.digits_model, **json_kwargs)
    index = client.get_model_repository_index(**json_kwargs)
    got["index"] = index.get("models", []) if is_grpc else index
    return got


def is_loaded(client: Any, model: str, is_grpc: bool) -> bool:
    """Whether the repository index says the model's version 1 is READY."""
    index = client.get_model_repository_index(**({"as_json": True} if is_grpc else {}))
    entries = index.get("models", []) if is_grpc else index
    return any(e["name"] == model and e.get("state") == "READY" for e in entries)


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
            **(
                {"as_json": True}
                if isinstance(self.client, grpcclient.InferenceServerClient)
                else {}
            )
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


class Slot:
    """Where one output goes in the output region."""

    def __init__(self, datatype: str, shape: list[int], offset: int) -> None:
        self.datatype = datatype
        self.dtype = np.dtype(triton_to_np_dtype(datatype))
        self.shape = shape
        self.offset = offset
        self.byte_size = int(np.prod(shape)) * self.dtype.itemsize

    def read(self, handle: Any) -> list[Any]:
        return shm.get_contents_as_numpy(handle, self.dtype, self.shape, self.offset).tolist()


def output_slots(outputs: list[dict[str, Any]], rows: int) -> dict[str, Slot]:
    """The outputs that the model metadata lists, one after the other in one region."""
    slots, offset = {}, 0
    for output in outputs:
        shape = [rows, *(int(d) for d in output["shape"][1:])]
        slots[output["name"]] = slot = Slot(output["datatype"], shape, offset)
        offset += slot.byte_size
    return slots


def through_shared_memory(
    client_module: Any, client: Any, model: str, batch: np.ndarray, outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The batch read from one region, every output written to another."""
    regions = Regions(client, client_module.__name__.rpartition(".")[2])
    slots = output_slots(outputs, len(batch))
    try:
        in_region, in_handle = regions.create("in", batch.nbytes)
        out_region, out_handle = regions.create("out", sum(s.byte_size for s in slots.values()))
        shm.set_shared_memory_region(in_handle, [batch])
        registered = regions.status()

        infer_input = client_module.InferInput("input", list(batch.shape), "FP32")
        infer_input.set_shared_memory(in_region, batch.nbytes)
        requested = []
        for name, slot in slots.items():
            output = client_module.InferRequestedOutput(name)
            output.set_shared_memory(out_region, slot.byte_size, slot.offset)
            requested.append(output)
        result = client.infer(model, [infer_input], outputs=requested)

        described = {o["name"]: o for o in response_of(result)["outputs"]}
        got: dict[str, Any] = {
            "registered": registered,
            "outputs": {
                name: {
                    "datatype": described[name]["datatype"],
                    "shape": [int(d) for d in described[name]["shape"]],
                    "parameters": described[name].get("parameters", {}),
                    "data": slot.read(out_handle),
                }
                for name, slot in slots.items()
            },
        }
    finally:
        regions.close()
    got["after_unregister"] = regions.status()
    return got


def mixed_shared_memory(
    client_module: Any, client: Any, model: str, batch: np.ndarray, outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """One request: "output" written to shared memory, "class" carried in the response."""
    regions = Regions(client, client_module.__name__.rpartition(".")[2] + "-mixed")
    slot = output_slots(outputs, len(batch))["output"]
    try:
        region, handle = regions.create("out", slot.byte_size)
        requested = [client_module.InferRequestedOutput(n) for n in ("output", "class")]
        requested[0].set_shared_memory(region, slot.byte_size)
        result = client.infer(model, [digits_input(client_module, batch)], outputs=requested)
        got: dict[str, Any] = {"output": slot.read(handle), "class": None, "class_error": None}
        try:
            got["class"] = result.as_numpy("class").tolist()
        except ValueError as err:  # the response's raw contents do not line up with its outputs
            got["class_error"] = f"as_numpy('class'): {err}"
    finally:
        regions.close()
    return got


def stream(client: Any, model: str, batch: np.ndarray) -> dict[str, Any]:
    """Five requests on one ModelStreamInfer stream, the third naming a wrong input.

    The first is sent alone, and its answer awaited (for up to FIRST_ANSWER_SECONDS) before
    the others follow: a server that answers only after more requests arrive or the stream
    half-closes makes such a client wait. Then stop_stream half-closes and waits for the rest.
    """
    answers: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_answer(result: Any, error: InferenceServerException | None) -> None:
        # Runs on the stream's thread, once per answer, in the order they arrive.
        if error is not None:
            answers.put({"error": error.message()})
            return
        try:
            answer = tensors(result, ("output", "class"))
        except Exception as err:  # kept, so that the test shows it rather than a lost answer
            answers.put({"id": response_of(result).get("id", ""), "client_error": repr(err)})
            return
        answers.put({"id": response_of(result).get("id", ""), **answer})

    sent: list[dict[str, Any]] = []
    first: list[dict[str, Any]] = []
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
                with contextlib.suppress(queue.Empty):
                    first.append(answers.get(timeout=FIRST_ANSWER_SECONDS))
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
    with httpclient.InferenceServerClient(args.http_address) as client:
        report["http"] = check_protocol(httpclient, client, args, batch)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
