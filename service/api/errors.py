"""The one place where errors become gRPC statuses: a wrapper around every method's handler."""

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from torchwire.service.errors import TorchwireError

log = logging.getLogger(__name__)


def rewrap(
    handler: Any, unary: Callable[[Callable], Callable], streaming: Callable[[Callable], Callable]
) -> Any:
    """The handler with its behaviour wrapped: `unary` for unary responses, `streaming` for
    streamed ones (whose behaviour is a generator)."""
    if handler.unary_unary:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.stream_unary:
        return handler._replace(stream_unary=unary(handler.stream_unary))
    if handler.unary_stream:
        return handler._replace(unary_stream=streaming(handler.unary_stream))
    return handler._replace(stream_stream=streaming(handler.stream_stream))


def _abort(context: grpc.ServicerContext, method: str, err: Exception) -> None:
    if not context.is_active():
        # The client cancelled or went away (reading its stream then raises): no one is left
        # to answer, and nothing failed on our side.
        log.debug("%s: the client left (%s)", method, type(err).__name__)
        context.abort(grpc.StatusCode.CANCELLED, "cancelled by the client")
    if isinstance(err, TorchwireError):
        context.abort(getattr(grpc.StatusCode, err.status), err.message)
    log.exception("%s failed", method)
    context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")


def map_errors(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler with `TorchwireError` mapped to its status and anything unexpected to
    INTERNAL (logged)."""

    def unary(behavior: Callable) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except Exception as err:
                _abort(context, method, err)
                raise  # unreachable: abort raises

        return wrapper

    def streaming(behavior: Callable) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except Exception as err:
                _abort(context, method, err)
                raise

        return wrapper

    return rewrap(handler, unary, streaming)
