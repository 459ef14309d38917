"""A bare gRPC Python server for the baseline: the same thread-pool server and options as
torchwire's, with a handler that only returns a fixed response of a given size.

`python -m bench.echo N` prints its port, then answers /bench.Echo/Call with N bytes.
"""

import sys
import threading
from concurrent import futures

import grpc

from torchwire.defaults import channel_options

METHOD = "/bench.Echo/Call"


def main() -> None:
    response = b"\0" * int(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=channel_options())
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: response)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
