"""Request messages are parsed inside the handler, where a malformed one is INVALID_ARGUMENT.

Left to itself, gRPC parses request bytes before the handler runs: bytes that are not a valid
message get INTERNAL ("Exception deserializing request!") and an ERROR log line, a server
fault for what is the client's mistake, and they are parsed before the caller's token is
checked. This wrapper, the innermost around every method of every service, takes the parsing
over: gRPC hands the handler the raw bytes, and it parses them after authentication.
"""

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from torchwire.service.api.errors import rewrap
from torchwire.service.errors import InvalidArgument


def _message_name(parse: Callable[[bytes], Any]) -> str:
    """`package.Message` of a generated `Message.FromString`, for the error."""
    owner = getattr(parse, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request"


def _parser(parse: Callable[[bytes], Any]) -> Callable[[bytes, str], Any]:
    """`parse`, with its failure reported as the client's invalid argument."""
    name = _message_name(parse)

    def decode(data: bytes, where: str) -> Any:
        try:
            return parse(data)
        except Exception as err:  # protobuf raises DecodeError, and others on odd bytes
            raise InvalidArgument(
                f"{where}: {len(data)} bytes that are not a valid {name} message "
                f"({type(err).__name__})"
            ) from None

    return decode


def parse_inside(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler taking raw request bytes and parsing them itself."""
    if handler.request_deserializer is None:
        return handler
    decode = _parser(handler.request_deserializer)

    def one(behavior: Callable) -> Callable:
        def wrapper(request: bytes, context: grpc.ServicerContext) -> Any:
            return behavior(decode(request, "request"), context)

        return wrapper

    def each(behavior: Callable) -> Callable:
        def wrapper(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            decoded = (decode(data, f"request[{i}]") for i, data in enumerate(requests))
            return behavior(decoded, context)

        return wrapper

    wrap = each if handler.request_streaming else one
    return rewrap(handler, wrap, wrap)._replace(request_deserializer=None)
