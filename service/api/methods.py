"""Every method's handler is wrapped once, when its service is registered, not per call.

gRPC's server interceptors run again for every call: each builds its wrapped handler anew
before the call can start, on the thread that polls for calls. Wrapping at registration costs
nothing per call and sees the same handlers: the generated `add_*_to_server` functions (of
torchwire.v1, the v2 protocol, health and reflection) register through a `Registrar` standing
in for the server.
"""

from collections.abc import Callable, Collection, Sequence

import grpc

NO_DEADLINE_S = 10 * 365 * 24 * 3600.0


def time_left(context: grpc.ServicerContext) -> float | None:
    """The call's remaining deadline in seconds, None without one."""
    # Without a deadline gRPC reports an enormous time remaining, too large to wait on.
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < NO_DEADLINE_S else None


Wrapper = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
"""Takes a method's full name (`/package.Service/Method`) and its handler, and returns the
handler to serve it with."""


def chain(wrappers: Sequence[Wrapper]) -> Wrapper:
    """The wrappers applied in turn, the first outermost."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        for wrapper in reversed(wrappers):
            handler = wrapper(method, handler)
        return handler

    return wrap


def split(methods: Collection[str], these: Wrapper, others: Wrapper) -> Wrapper:
    """`these` for the named methods, `others` for the rest."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return (these if method in methods else others)(method, handler)

    return wrap


class Registrar:
    """Takes a service's method handlers, wraps each, and registers them on `server`."""

    def __init__(self, server: grpc.Server, wrap: Wrapper) -> None:
        self.server = server
        self.wrap = wrap

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self.server.add_registered_method_handlers(service, wrapped)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """The generated code registers every service twice: as generic handlers (these,
        unwrapped, left out) and as registered method handlers (wrapped above)."""
