"""Bearer-token authentication: a server interceptor that lets health checks through."""

import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from torchwire.service.api.errors import rewrap
from torchwire.service.errors import Unauthenticated

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def load_tokens(tokens: str, tokens_file: str) -> frozenset[str]:
    """Tokens from a comma-separated list and from a file of one token per line."""
    found = [t.strip() for t in tokens.split(",")]
    if tokens_file:
        for line in Path(tokens_file).read_text().splitlines():
            found.append(line.split("#", 1)[0].strip())
    return frozenset(t for t in found if t)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every call without `authorization: Bearer <token>` for
    one of `tokens`; health checks stay open so that orchestrators can probe the server."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _authorized(self, metadata: Any) -> bool:
        header = dict(metadata or ()).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.encode()
        # Compare with every token, in constant time, so timing tells nothing.
        return any([hmac.compare_digest(given, t) for t in self._tokens])

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method in OPEN_METHODS
            or self._authorized(handler_call_details.invocation_metadata)
        ):
            return handler
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same kind of handler, answering UNAUTHENTICATED without running the method."""
    message = "a valid bearer token is required (metadata 'authorization: Bearer <token>')"

    def deny(behavior: Callable) -> Callable:
        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            raise Unauthenticated(message)

        return refuse

    def deny_stream(behavior: Callable) -> Callable:
        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            raise Unauthenticated(message)
            yield  # a generator, as streaming handlers are

        return refuse

    return rewrap(handler, deny, deny_stream)
