"""Bearer-token authentication: a wrapper around every method's handler but health checks."""

import hmac
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from torchwire.service.api.errors import rewrap
from torchwire.service.errors import Unauthenticated

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
_REFUSAL = "a valid bearer token is required (metadata 'authorization: Bearer <token>')"


def load_tokens(tokens: str, tokens_file: str) -> frozenset[str]:
    """Tokens from a comma-separated list and from a file of one token per line."""
    found = [t.strip() for t in tokens.split(",")]
    if tokens_file:
        for line in Path(tokens_file).read_text().splitlines():
            found.append(line.split("#", 1)[0].strip())
    return frozenset(t for t in found if t)


class Authenticator:
    """Refuses, with UNAUTHENTICATED, every call without `authorization: Bearer <token>` for
    one of `tokens`, before its request is parsed; health checks stay open so that
    orchestrators can probe the server."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _check(self, context: grpc.ServicerContext) -> None:
        header = next(
            (value for key, value in context.invocation_metadata() if key == "authorization"), ""
        )
        self.check(str(header))

    def check(self, header: str) -> None:
        """Refuses an `authorization` header value that is not `Bearer <a valid token>`.

        Raises:
            Unauthenticated: it is not.
        """
        scheme, _, token = header.partition(" ")
        given = token.encode()
        # Compare with every token, in constant time, so timing tells nothing.
        matches = [hmac.compare_digest(given, t) for t in self._tokens]
        if scheme.lower() != "bearer" or not token or not any(matches):
            raise Unauthenticated(_REFUSAL)

    def __call__(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler, checking the caller's token first (unless the method is open)."""
        if method in OPEN_METHODS:
            return handler

        def unary(behavior: Callable) -> Callable:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
                self._check(context)
                return behavior(request, context)

            return wrapper

        def streaming(behavior: Callable) -> Callable:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._check(context)
                yield from behavior(request, context)

            return wrapper

        return rewrap(handler, unary, streaming)
