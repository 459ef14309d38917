"""The Open Inference Protocol v2 over HTTP/JSON, on a port of its own (`--http-address`):
a Starlette app on uvicorn, in a thread of the server process, calling the same data plane
as the gRPC front door. Errors are the protocol's `{"error": "..."}` with the HTTP status of
their gRPC code; authentication and TLS are the gRPC port's."""

import logging
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from torchwire.service.api import v2_json as convert
from torchwire.service.api.auth import Authenticator
from torchwire.service.api.metrics import ServiceMetrics
from torchwire.service.app.inference_types import non_negative
from torchwire.service.app.open_inference import OpenInference, is_decimal
from torchwire.service.config import ServerConfig
from torchwire.service.errors import (
    InvalidArgument,
    ResourceExhausted,
    StartupError,
    TorchwireError,
)

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""gRPC status name -> HTTP status; anything else is 500."""
OPEN_PATHS = ("/v2/health/",)
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""Request encodings taken, with their zlib window bits."""
"""Paths that need no token: orchestrators probe them."""
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"

Handler = Callable[[Request], Awaitable[Response]]


def _error(err: Exception) -> JSONResponse:
    if isinstance(err, TorchwireError):
        return JSONResponse({"error": err.message}, HTTP_STATUS.get(err.status, 500))
    log.error("REST request failed", exc_info=err)
    return JSONResponse({"error": "internal error; the server log has the details"}, 500)


class RestApi:
    """The routes, each a thin call of the data plane in a worker thread."""

    def __init__(
        self,
        plane: OpenInference,
        metrics: ServiceMetrics,
        authenticator: Authenticator | None,
        max_body_bytes: int,
    ) -> None:
        self.plane = plane
        self.metrics = metrics
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes

    def app(self) -> Starlette:
        """The ASGI application."""
        routes = [
            ("/v2/health/live", "GET", self.live),
            ("/v2/health/ready", "GET", self.ready),
            ("/v2", "GET", self.server_metadata),
            ("/v2/models/stats", "GET", self.statistics),
            ("/v2/repository/index", "POST", self.repository_index),
            ("/v2/repository/models/{name}/load", "POST", self.load),
            ("/v2/repository/models/{name}/unload", "POST", self.unload),
            ("/v2/systemsharedmemory/status", "GET", self.shm_status),
            ("/v2/systemsharedmemory/region/{region}/status", "GET", self.shm_status),
            ("/v2/systemsharedmemory/region/{region}/register", "POST", self.shm_register),
            ("/v2/systemsharedmemory/unregister", "POST", self.shm_unregister),
            ("/v2/systemsharedmemory/region/{region}/unregister", "POST", self.shm_unregister),
        ]
        for prefix in (MODEL, VERSION):
            routes += [
                (prefix, "GET", self.model_metadata),
                (f"{prefix}/ready", "GET", self.model_ready),
                (f"{prefix}/config", "GET", self.model_config),
                (f"{prefix}/stats", "GET", self.statistics),
                (f"{prefix}/infer", "POST", self.infer),
            ]
        return Starlette(
            routes=[
                Route(path, self._wrapped(path, handler), methods=[verb])
                for path, verb, handler in routes
            ],
            # Answers compressed for clients that ask (Accept-Encoding: gzip).
            middleware=[Middleware(GZipMiddleware, minimum_size=1024)],
            exception_handlers={404: self._unrouted, 405: self._unrouted},
        )

    async def _unrouted(self, request: Request, exc: Exception) -> Response:
        """No route for the path, or not for its method: a v2 JSON error, counted."""
        status = getattr(exc, "status_code", 404)
        why = "no such endpoint" if status == 404 else f"{request.method} is not allowed here"
        requests, _ = self.metrics.http_series("(no route)")
        requests(status).inc()
        return JSONResponse({"error": f"{request.url.path}: {why}"}, status)

    def _wrapped(self, route: str, handler: Handler) -> Handler:
        """The handler authenticated, its errors answered as v2 JSON errors, and counted."""
        requests, latency = self.metrics.http_series(route)
        open_route = route.startswith(OPEN_PATHS)

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if self.authenticator is not None and not open_route:
                    self.authenticator.check(request.headers.get("authorization", ""))
                response = await handler(request)
            except Exception as err:
                response = _error(err)
            requests(response.status_code).inc()
            latency.observe(time.perf_counter() - started)
            return response

        return endpoint

    async def _body(self, request: Request) -> bytes:
        """The body, refused past the message limit before it is all read."""
        declared = request.headers.get("content-length", "")
        if is_decimal(declared) and int(declared) > self.max_body_bytes:
            raise ResourceExhausted(
                f"body of {declared} bytes; max_message_bytes={self.max_body_bytes}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise ResourceExhausted(
                    f"body over {self.max_body_bytes} bytes (max_message_bytes)"
                )
            chunks.append(chunk)
        encoding = request.headers.get("content-encoding", "")
        return await self._call(self._decoded, b"".join(chunks), encoding)

    def _decoded(self, body: bytes, encoding: str) -> bytes:
        """The body without its Content-Encoding (gzip or deflate), bounded by the message
        limit however well it was compressed."""
        if encoding in ("", "identity"):
            return body
        if encoding not in CONTENT_ENCODINGS:
            raise InvalidArgument.field(
                "Content-Encoding", encoding, f"must be one of {sorted(CONTENT_ENCODINGS)}"
            )
        inflater = zlib.decompressobj(CONTENT_ENCODINGS[encoding])
        try:
            plain = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as err:
            raise InvalidArgument.field("Content-Encoding", encoding, f"body: {err}") from err
        if len(plain) > self.max_body_bytes:
            raise ResourceExhausted(
                f"body decompresses to over {self.max_body_bytes} bytes (max_message_bytes)"
            )
        if not inflater.eof or inflater.unused_data:
            why = "is cut short" if not inflater.eof else "has bytes after its end"
            raise InvalidArgument.field("Content-Encoding", encoding, f"the body {why}")
        return plain

    async def _json(self, request: Request) -> dict[str, Any]:
        document = convert.parse_json(await self._body(request))
        if not isinstance(document, dict):
            raise InvalidArgument.field("body", document, "must be a JSON object")
        return document

    @staticmethod
    async def _call(function: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(function, *args)

    # ------------------------------------------------------------------ routes

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.plane.ready()
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        name, version, extensions = self.plane.server_metadata()
        return JSONResponse({"name": name, "version": version, "extensions": list(extensions)})

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        meta = await self._call(self.plane.model_metadata, name, version)
        return JSONResponse(convert.model_metadata(meta))

    async def model_ready(self, request: Request) -> Response:
        ready = await self._call(self.plane.model_ready, *_model(request))
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    async def model_config(self, request: Request) -> Response:
        config = await self._call(self.plane.model_config, *_model(request))
        return JSONResponse(convert.model_config(config))

    async def statistics(self, request: Request) -> Response:
        reports = await self._call(self.plane.statistics, *_model(request))
        return JSONResponse(convert.statistics(reports, str(self.plane.models.device)))

    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        body = await self._body(request)
        parsed = await self._call(
            convert.infer_request, name, version, body, request.headers.get(convert.HEADER_LENGTH)
        )
        response = await self._call(self.plane.infer, parsed, None)
        content, header_length = convert.infer_response(response)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )

    async def repository_index(self, request: Request) -> Response:
        document = await self._json(request)
        entries = await self._call(self.plane.repository_index, "", document.get("ready") is True)
        return JSONResponse(
            [
                {"name": e.name, "version": str(e.version)}
                | {"state": "READY" if e.ready else "UNAVAILABLE", "reason": e.reason}
                for e in entries
            ]
        )

    async def load(self, request: Request) -> Response:
        parameters = _parameters(await self._json(request))
        await self._call(self.plane.load, "", request.path_params["name"], parameters)
        return JSONResponse({})

    async def unload(self, request: Request) -> Response:
        parameters = _parameters(await self._json(request))
        await self._call(self.plane.unload, "", request.path_params["name"], parameters)
        return JSONResponse({})

    async def shm_status(self, request: Request) -> Response:
        regions = self.plane.shared_memory.status(request.path_params.get("region", ""))
        return JSONResponse(
            [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in regions
            ]
        )

    async def shm_register(self, request: Request) -> Response:
        document = await self._json(request)
        key = document.get("key")
        if not isinstance(key, str):
            raise InvalidArgument.field("key", key, "must be a string")
        offset = non_negative(document.get("offset", 0), "offset")
        size = non_negative(document.get("byte_size"), "byte_size")
        await self._call(
            self.plane.shared_memory.register, request.path_params["region"], key, offset, size
        )
        return JSONResponse({})

    async def shm_unregister(self, request: Request) -> Response:
        self.plane.shared_memory.unregister(request.path_params.get("region", ""))
        return JSONResponse({})


def _parameters(document: dict[str, Any]) -> dict[str, Any]:
    """A repository request's parameters (an object; none when absent)."""
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgument.field("parameters", parameters, "must be a JSON object")
    return parameters


def _model(request: Request) -> tuple[str, str]:
    """The model name and version (empty: the latest) a route's path names."""
    return request.path_params.get("name", ""), request.path_params.get("version", "")


class RestServer:
    """uvicorn serving the REST app on its own thread and socket.

    Binds in the constructor, so that a port in use is refused before the server starts.

    Raises:
        StartupError: the address cannot be bound.
    """

    def __init__(self, api: RestApi, config: ServerConfig) -> None:
        host, _, port = config.http_address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, int(port)))
        except (OSError, ValueError) as err:
            self._socket.close()
            raise StartupError(f"cannot listen on {config.http_address} (HTTP): {err}") from None
        self.port = self._socket.getsockname()[1]
        tls: dict[str, Any] = {}
        if config.tls_cert:
            tls = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
            if config.tls_client_ca:
                tls |= {"ssl_ca_certs": config.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self._server = uvicorn.Server(
            uvicorn.Config(
                api.app(),
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(config.grace_seconds) or 1,
                **tls,
            )
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="http", daemon=True
        )

    def start(self) -> None:
        """Starts serving; returns once uvicorn listens."""
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.01)
        if not self._server.started:
            raise StartupError("the HTTP server did not start; the log says why")

    def stop(self, timeout: float) -> None:
        """Stops taking connections and lets requests in flight finish, up to `timeout`."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
