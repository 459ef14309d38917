"""A closed-loop load generator in a process of its own: N client threads, each on a
connection of its own, each sending the same serialized request again as soon as the previous
answer arrives. Requests and answers stay bytes (no protobuf work on this side), so that the
figures measure the server.

`python -m bench.load ADDRESS METHOD REQUEST_FILE CLIENTS SECONDS` prints one JSON line:
calls, wall seconds and every call's latency.
"""

import contextlib
import json
import sys
import threading
import time
from pathlib import Path

import grpc

from torchwire.defaults import channel_options

WARMUP_CALLS = 3
CALL_TIMEOUT_S = 30.0
"""No call waits longer: a server that stops answering ends the run with an error."""


def run(address: str, method: str, payload: bytes, clients: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    ready = threading.Barrier(clients + 1, timeout=120)
    start: list[float] = []
    failures: list[BaseException] = []

    def client(index: int) -> None:
        # A subchannel pool of its own: one TCP connection per client, as separate client
        # processes would have.
        options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
        try:
            with grpc.insecure_channel(address, options=options) as channel:
                call = channel.unary_unary(method)
                for _ in range(WARMUP_CALLS):
                    call(payload, timeout=CALL_TIMEOUT_S)
                ready.wait()
                mine, stop = latencies[index], start[0] + seconds
                while (begin := time.perf_counter()) < stop:
                    call(payload, timeout=CALL_TIMEOUT_S)
                    mine.append(time.perf_counter() - begin)
        except BaseException as err:  # every other client, and the caller, must stop too
            failures.append(err)
            ready.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.append(time.perf_counter() + 0.05)
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: see below
        ready.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} of {clients} clients failed") from failures[0]
    wall = time.perf_counter() - start[0]
    return {"wall_s": wall, "latencies": [x for mine in latencies for x in mine]}


def main() -> None:
    address, method, request_file, clients, seconds = sys.argv[1:6]
    result = run(address, method, Path(request_file).read_bytes(), int(clients), float(seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
