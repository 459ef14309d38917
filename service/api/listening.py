"""What the server and its frontend processes both need to listen: socket options, binding
(with TLS when configured), and the wrappers around every method a process serves itself."""

from functools import partial
from pathlib import Path

import grpc

from torchwire.defaults import channel_options
from torchwire.service.api.auth import Authenticator, load_tokens
from torchwire.service.api.decoding import parse_inside
from torchwire.service.api.errors import map_errors
from torchwire.service.api.methods import Wrapper
from torchwire.service.api.metrics import ServiceMetrics, measure
from torchwire.service.config import ServerConfig


def server_options(max_message_bytes: int, share_port: bool) -> list[tuple[str, int]]:
    """The message limits, and SO_REUSEPORT only where the server and its frontends share
    the port: gRPC sets it by default, which lets any second server bind a port in use and
    the kernel split the clients between the two."""
    return [*channel_options(max_message_bytes), ("grpc.so_reuseport", int(share_port))]


def bind(server: grpc.Server, address: str, config: ServerConfig) -> int:
    """Binds `address`, with TLS when the config has a certificate; returns the port, 0 when
    the address cannot be bound."""
    try:
        if config.tls_cert:
            return server.add_secure_port(address, tls_credentials(config))
        return server.add_insecure_port(address)
    except RuntimeError:
        return 0


def tls_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """TLS from PEM files; with a client CA, clients must present a certificate it signed."""
    chain = Path(config.tls_cert).read_bytes()
    key = Path(config.tls_key).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def serving_wrappers(metrics: ServiceMetrics, config: ServerConfig) -> list[Wrapper]:
    """Around every method a process serves itself, outermost first: metrics see every
    request with the status its error mapped to; authentication runs before the request is
    parsed, so garbage without a token is UNAUTHENTICATED, and garbage with one
    INVALID_ARGUMENT."""
    wrappers: list[Wrapper] = [partial(measure, metrics), map_errors]
    tokens = load_tokens(config.auth_tokens, config.auth_tokens_file)
    if tokens:
        wrappers.append(Authenticator(tokens))
    wrappers.append(parse_inside)
    return wrappers
