"""A closed-loop load generator in a process of its own: N client threads, each on a
connection of its own, each sending the same serialized request again as soon as the previous
answer arrives. Requests and answers stay bytes (no protobuf work on this side), so that the
figures measure the server.

`python -m bench.load ADDRESS METHOD REQUEST_FILE CLIENTS SECONDS` prints one JSON line:
calls, wall seconds and every call's latency.
"""

import json
import sys
import threading
import time
from pathlib import Path

import grpc

from torchwire.defaults import channel_options

WARMUP_CALLS = 3


def run(address: str, method: str, payload: bytes, clients: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    ready = threading.Barrier(clients + 1)
    start: list[float] = []

    def client(index: int) -> None:
        # A subchannel pool of its own: one TCP connection per client, as separate client
        # processes would have.
        options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(address, options=options) as channel:
            call = channel.unary_unary(method)
            for _ in range(WARMUP_CALLS):
                call(payload)
            ready.wait()
            mine, stop = latencies[index], start[0] + seconds
            while (begin := time.perf_counter()) < stop:
                call(payload)
                mine.append(time.perf_counter() - begin)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.append(time.perf_counter() + 0.05)
    ready.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start[0]
    return {"wall_s": wall, "latencies": [x for mine in latencies for x in mine]}


def main() -> None:
    address, method, request_file, clients, seconds = sys.argv[1:6]
    result = run(address, method, Path(request_file).read_bytes(), int(clients), float(seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
