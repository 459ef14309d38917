"""Calls passed on as bytes to the server that owns the store.

A frontend process (see `torchwire.service.frontend`) serves Predict itself and hands every
other method to the primary server over a local channel: the request's bytes, its metadata
(the caller's token and request id among them) and its deadline go through unchanged, and the
answer's bytes and status come back unchanged. A caller that cancels cancels the forwarded
call too.
"""

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from torchwire.service.api.methods import time_left

_NOT_FORWARDED = ("user-agent", "grpc-")
"""Metadata gRPC sets itself on the second hop."""


def _call_options(context: grpc.ServicerContext) -> dict[str, Any]:
    metadata = tuple(
        (key, value)
        for key, value in context.invocation_metadata()
        if not key.startswith(_NOT_FORWARDED)
    )
    return {"metadata": metadata, "timeout": time_left(context)}


def _relay(context: grpc.ServicerContext, err: grpc.RpcError) -> None:
    """Ends the call with the status the primary answered."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNAVAILABLE
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    context.abort(code, details or "")


def forward_call(
    call: grpc.UnaryUnaryMultiCallable, request: bytes, context: grpc.ServicerContext
) -> bytes:
    """Makes a unary call on the server with the caller's metadata and deadline; the
    caller's cancellation cancels it, and its status becomes the caller's.
    """
    future = call.future(request, **_call_options(context))
    context.add_callback(future.cancel)
    try:
        return future.result()
    except grpc.RpcError as err:
        _relay(context, err)
        raise


def forwarder(channel: grpc.Channel) -> Callable[[str, grpc.RpcMethodHandler], Any]:
    """A wrapper that replaces a method's handler with one forwarding its calls on `channel`."""

    def forward(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
        open_call = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[(streaming_in, streaming_out)](method)

        def unary(request: Any, context: grpc.ServicerContext) -> bytes:
            return forward_call(open_call, request, context)

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            responses = open_call(request, **_call_options(context))
            context.add_callback(responses.cancel)
            try:
                yield from responses
            except grpc.RpcError as err:
                _relay(context, err)
                raise

        behavior = streaming if streaming_out else unary
        kind = ("stream_" if streaming_in else "unary_") + ("stream" if streaming_out else "unary")
        behaviors = dict.fromkeys(("unary_unary", "unary_stream", "stream_unary", "stream_stream"))
        behaviors[kind] = behavior
        return handler._replace(request_deserializer=None, response_serializer=None, **behaviors)

    return forward
