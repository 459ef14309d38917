"""Server memory under hostile input: a bounded fuzz of every RPC, with RSS before and after.

Starts `torchwire serve` as a subprocess on 127.0.0.1 with a temporary store, trains a small
model on the built-in digits, then sends `--requests` hostile requests (raw random bytes,
random well-formed messages of each method's type, and large but allowed Predict and
ModelInfer tensors) to every method of `torchwire.v1.TorchWire` and
`inference.GRPCInferenceService` from several client threads. The server's RSS (VmRSS) is
read after the warm-up requests and at the end:

    .venv/bin/python -m bench.fuzz_memory [--requests 5000] [--env MALLOC_ARENA_MAX=2]

Exits 1 when the end RSS exceeds the warm-up RSS by more than `--max-growth`.
"""

import argparse
import collections
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from torchwire.client import Client, demo
from torchwire.defaults import channel_options
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.v1 import tensors
from torchwire.v1 import torchwire_pb2 as pb

MODEL = "fuzz-mlp"
NAMES = [MODEL, "digits", "", "../etc", "a" * 65, "x/y", "nul\x00", "train", "test", "eager"]
DTYPES = ["float32", "float64", "int64", "uint8", "bool", "", "FP32", "INT64", "BYTES"]
METHODS: list[MethodDescriptor] = [
    *pb.DESCRIPTOR.services_by_name["TorchWire"].methods,
    *v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods,
]
#: Small job limits: fuzzed Train requests may queue one job and run one, no more.
SERVER_FLAGS = [
    *("--max-concurrent-jobs", "1", "--max-queued-jobs", "1"),
    *("--max-upload-bytes", "1048576", "--grace-seconds", "5"),
]


def rss_mib(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(
    store: Path, env: dict[str, str], flags: list[str]
) -> tuple[subprocess.Popen, str]:
    """`python -m torchwire.service` on a free port of 127.0.0.1; its stderr goes to a file."""
    log = open(store / "server.log", "wb")  # noqa: SIM115 (the child keeps writing to it)
    return demo.start_server(
        str(store / "store"), *SERVER_FLAGS, *flags, stderr=log, env={**os.environ, **env}
    )


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _scalar(rng: random.Random, field: FieldDescriptor) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        pool = DTYPES if field.name in ("dtype", "datatype") else NAMES
        return rng.choice(pool) if rng.random() < 0.7 else rng.randbytes(8).hex()
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randrange(300))
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, 1e-4, 0.5, 1.0, 1e30, -1.0, float("nan"), float("inf")])
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.randint(-1, 10)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        bits = 64 if kind == FieldDescriptor.TYPE_UINT64 else 32
        return rng.choice([rng.randint(0, 70), rng.randint(0, 2**bits - 1)])
    bits = 64 if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64) else 32
    return rng.choice([rng.randint(-3, 70), rng.randint(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)])


def _value(rng: random.Random, field: FieldDescriptor, depth: int) -> Any:
    """One random value of a field: a nested message or a scalar."""
    if field.message_type is not None:
        return random_message(rng, field.message_type, depth + 1)
    return _scalar(rng, field)


def random_message(rng: random.Random, descriptor: Descriptor, depth: int = 0) -> Any:
    """A message of this type with each field absent or random, nested messages included."""
    values = {}
    for field in descriptor.fields:
        nested = field.message_type
        if rng.random() < 0.5 or (
            nested is not None
            and (
                depth > 3 or nested.GetOptions().map_entry or nested.full_name.startswith("google.")
            )
        ):
            continue
        count = rng.randrange(4) if field.is_repeated else 0
        values[field.name] = (
            [_value(rng, field, depth) for _ in range(count)]
            if field.is_repeated
            else _value(rng, field, depth)
        )
    return message_factory.GetMessageClass(descriptor)(**values)


def large_tensor_request(rng: random.Random) -> tuple[str, bytes]:
    """A Predict or ModelInfer with megabytes of data, below every limit: the right shape for
    the model, or a wrong shape or dtype that is refused only after the bytes are decoded."""
    rows = rng.randrange(1000, 40000)
    x = np.random.default_rng(rng.randrange(2**32)).random((rows, 1, 8, 8), dtype=np.float32)
    if rng.random() < 0.4:
        x = x.reshape(rows, 64) if rng.random() < 0.5 else x.astype(np.float64)
    if rng.random() < 0.5:
        request = pb.PredictRequest(model_name=MODEL, inputs=tensors.encode(x))
        return "/torchwire.v1.TorchWire/Predict", request.SerializeToString()
    request = v2.ModelInferRequest(model_name=MODEL, raw_input_contents=[x.tobytes()])
    datatype = "FP32" if x.dtype == np.float32 else "FP64"
    request.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
    path = "/inference.GRPCInferenceService/ModelInfer"
    return path, request.SerializeToString()


def hostile_request(seed: int, large_share: float) -> tuple[MethodDescriptor, list[bytes]]:
    """Request number `seed`, the same in every run: its method and its messages' bytes.
    `large_share` of them are large tensors, a third of the rest raw bytes."""
    rng = random.Random(seed)
    kind = rng.random()
    if kind < large_share:
        path, data = large_tensor_request(rng)
        method = next(m for m in METHODS if f"/{m.containing_service.full_name}/{m.name}" == path)
        return method, [data]
    method = rng.choice(METHODS)
    count = rng.randrange(5) if method.client_streaming else 1
    if kind < large_share + (1 - large_share) / 3:
        return method, [rng.randbytes(rng.randrange(1, 2000)) for _ in range(count)]
    return method, [
        random_message(rng, method.input_type).SerializeToString() for _ in range(count)
    ]


def send(channel: grpc.Channel, method: MethodDescriptor, messages: list[bytes]) -> str:
    """Sends raw bytes to a method and returns the status code's name."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    factory = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    call = factory(path, request_serializer=None, response_deserializer=None)
    try:
        result = call(iter(messages) if method.client_streaming else messages[0], timeout=20)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as err:
        return err.code().name
    return "OK"


def fuzz(
    address: str, seeds: range, threads: int, deadline: float, large_share: float = 0.1
) -> collections.Counter:
    """Sends the requests of `seeds` from `threads` threads, until done or past `deadline`."""
    codes: collections.Counter = collections.Counter()
    lock = threading.Lock()
    with grpc.insecure_channel(address, options=channel_options()) as channel:

        def one(seed: int) -> None:
            if time.monotonic() > deadline:
                code = "SKIPPED (time cap)"
            else:
                code = send(channel, *hostile_request(seed, large_share))
            with lock:
                codes[code] += 1

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, seeds))
    return codes


def settled_rss(pid: int, seconds: float) -> float:
    """RSS after the server has had `seconds` to finish what it was doing."""
    time.sleep(seconds)
    return rss_mib(pid)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="hostile requests in all")
    parser.add_argument("--warmup", type=int, default=500, help="requests before the baseline")
    parser.add_argument("--threads", type=int, default=8, help="client threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large-share", type=float, default=0.1, help="share of large tensors")
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds of fuzzing")
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed end/warm-up - 1")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="server environment"
    )
    parser.add_argument(
        "--server-flag", action="append", default=[], metavar="FLAG", help="extra serve flag"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The fuzz against a fresh server; the figures as a dict."""
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="torchwire-fuzz-") as tmp:
        process, address = start_server(Path(tmp), env, args.server_flag)
        try:
            with Client(address) as client:
                client.wait_ready()
                client.train(MODEL, "digits", epochs=1, val_fraction=0).wait()
            started = time.monotonic()
            deadline = started + args.time_cap
            base = args.seed * 1_000_000
            warmup = range(base, base + args.warmup)
            codes = fuzz(address, warmup, args.threads, deadline, args.large_share)
            warm = settled_rss(process.pid, 2.0)
            rest = range(base + args.warmup, base + args.requests)
            codes += fuzz(address, rest, args.threads, deadline, args.large_share)
            elapsed = time.monotonic() - started
            end = settled_rss(process.pid, 2.0)
            tracebacks = (Path(tmp) / "server.log").read_text(errors="replace").count("Traceback")
        finally:
            stop(process)
    return {
        "env": env,
        "codes": codes,
        "elapsed_s": elapsed,
        "tracebacks": tracebacks,
        "warm_mb": warm,
        "end_mb": end,
        "ratio": end / warm,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    r = run(args)
    codes = r["codes"]
    print(f"requests: {sum(codes.values())} in {r['elapsed_s']:.1f} s, {args.threads} threads")
    print(f"server environment: {r['env']}")
    print("status codes: " + ", ".join(f"{c}={n}" for c, n in codes.most_common()))
    print(f"server tracebacks logged: {r['tracebacks']}")
    print(f"RSS after warm-up ({args.warmup} requests): {r['warm_mb']:.0f} MiB")
    print(f"RSS at the end: {r['end_mb']:.0f} MiB; ratio {r['ratio']:.3f}")
    return 0 if r["ratio"] <= 1 + args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
