"""Builds the gRPC server: the TorchWire service, the v2 protocol, health and reflection, every
method wrapped once (metrics, errors, authentication, parsing), explicit message limits, the
frontend processes when asked for, and an orderly shutdown."""

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service import logs
from torchwire.service.api.auth import Authenticator, load_tokens
from torchwire.service.api.listening import bind, server_options, serving_wrappers
from torchwire.service.api.methods import Registrar, chain
from torchwire.service.api.metrics import ServiceMetrics
from torchwire.service.api.rest import RestApi, RestServer
from torchwire.service.api.servicer import TorchWireServicer
from torchwire.service.api.v2 import InferenceServicer
from torchwire.service.app.catalog import Catalog
from torchwire.service.app.importing import ModelImporter
from torchwire.service.app.jobs import JobManager
from torchwire.service.app.open_inference import OpenInference
from torchwire.service.app.shared_memory import SharedMemoryRegistry
from torchwire.service.config import ServerConfig
from torchwire.service.errors import StartupError
from torchwire.service.frontend import FrontendSetup, model_service
from torchwire.service.frontend_pool import FrontendPool
from torchwire.service.store import Store
from torchwire.service.store.lock import StoreLock
from torchwire.v1 import torchwire_pb2 as pb
from torchwire.v1 import torchwire_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TorchWire"].full_name
V2_SERVICE_NAME = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SHUTDOWN_MARGIN_S = 3.0
"""How long shutdown waits for cancelled RPCs to end after the grace period."""


class TorchwireServer:
    """The running service: store, job manager, model cache and the gRPC server around them."""

    def __init__(self, config: ServerConfig) -> None:
        """Binds the port, then takes the store: a server refused either touches nothing.

        Raises:
            StartupError: the address is in use or cannot be bound, another server holds the
                store, or a data root is missing.
        """
        self.config = config
        self.metrics = ServiceMetrics()
        self.health = health.HealthServicer()
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.rpc_threads, thread_name_prefix="rpc"),
            options=server_options(config.max_message_bytes, share_port=config.frontends > 0),
        )
        self.port = self._bind()
        self.address = f"{config.address.rsplit(':', 1)[0]}:{self.port}"
        self.lock = StoreLock(config.store_dir, self.address)
        self.frontends: FrontendPool | None = None
        self.rest: RestServer | None = None
        self.http_port = 0
        self._local_dir: str | None = None
        try:
            self._open(config)
        except BaseException:
            self.grpc.stop(None)  # unbinds the port
            if self.rest is not None:
                self.rest.stop(0)
            self._remove_local_socket()
            self.lock.release()
            raise

    def _bind(self) -> int:
        """Binds the configured address; a port in use is refused (SO_REUSEPORT is set only
        with frontends, and only after this process checked the port is free)."""
        config = self.config
        _check_free(config.address)
        port = bind(self.grpc, config.address, config)
        if port == 0:
            raise StartupError(
                f"cannot listen on {config.address}: the address is in use (another torchwire "
                "server?) or not an address of this machine"
            )
        return port

    def _open(self, config: ServerConfig) -> None:
        """The store, the jobs and the models, and the services over them."""
        for root in config.data_root_paths:
            if not root.is_dir():
                raise StartupError(f"data root {str(root)!r} is not a directory")
        self.store = Store(
            config.store_dir,
            config.max_upload_bytes,
            config.data_root_paths,
            config.allow_download,
        )
        self.jobs = JobManager(
            self.store,
            config.max_concurrent_jobs,
            config.max_queued_jobs,
            self.metrics.observe_epoch,
            config.multi_node,
        )
        self.models = model_service(config, self.store, self.metrics)
        self.metrics.watch(
            self.models.queued,
            self.models.loaded_here,
            self.store.registry.count_jobs,
        )
        catalog = Catalog(self.store, self.models)
        importer = ModelImporter(self.store, config.max_import_bytes)
        servicer = TorchWireServicer(
            catalog, self.jobs, self.models, importer, config.max_message_bytes
        )
        registrar = Registrar(self.grpc, chain(serving_wrappers(self.metrics, config)))
        pb_grpc.add_TorchWireServicer_to_server(servicer, registrar)
        self._stopping = False
        if config.frontends:
            self.frontends = self._frontend_pool(config)
        plane = OpenInference(
            catalog,
            self.models,
            SharedMemoryRegistry(),
            lambda: not self._stopping,
            self.frontends.statistics if self.frontends else list,
        )
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                V2_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            registrar,
        )
        if config.http_address:
            tokens = load_tokens(config.auth_tokens, config.auth_tokens_file)
            api = RestApi(
                plane,
                self.metrics,
                Authenticator(tokens) if tokens else None,
                config.max_message_bytes,
            )
            self.rest = RestServer(api, config)
            self.http_port = self.rest.port
        self.metrics_port = (
            self.metrics.serve(
                config.metrics_address, self.frontends.metrics if self.frontends else None
            )
            if config.metrics_address
            else 0
        )

    def _frontend_pool(self, config: ServerConfig) -> FrontendPool:
        """The frontends, which reach this process on a Unix socket in a directory only this
        user can enter (the same authentication applies there as on the port), and are told
        whenever a model's loaded runtimes or latest version change."""
        self._local_dir = tempfile.mkdtemp(prefix="torchwire-")
        local = f"unix:{self._local_dir}/server.sock"
        if not self.grpc.add_insecure_port(local):
            raise StartupError(f"cannot listen on {local} for the frontends")
        pool = FrontendPool(
            FrontendSetup(config, self.address, local, os.getpid()),
            config.frontends,
            *logs.current(),
            self.models,
        )
        self.models.on_forget = pool.forget
        self.store.versions.on_latest_change = lambda name: pool.forget(name, None)
        return pool

    def _remove_local_socket(self) -> None:
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)

    def start(self) -> None:
        """Starts serving (and the frontends), then reports SERVING to health checks.

        Raises:
            StartupError: a frontend could not start.
        """
        self.grpc.start()
        if self.frontends is not None:
            self.frontends.start()
        if self.rest is not None:
            self.rest.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving on %s (store %s)", self.address, self.config.store_dir)
        if self.metrics_port:
            host = self.config.metrics_address.rsplit(":", 1)[0]
            log.info("metrics on %s:%d /metrics", host, self.metrics_port)
        if self.http_port:
            host = self.config.http_address.rsplit(":", 1)[0]
            log.info("v2 REST on %s:%d /v2", host, self.http_port)

    def stop(self, grace: float | None = None) -> bool:
        """Shuts down in order, within `grace` plus SHUTDOWN_MARGIN_S whatever happens: stop
        accepting, drain RPCs while jobs stop (checkpoints kept) and workers are joined,
        cancel the RPCs still running at the end of the grace period, then release models,
        the store and its lock. Returns False when RPCs were still running at the bound."""
        grace = self.config.grace_seconds if grace is None else grace
        bound = time.monotonic() + grace + SHUTDOWN_MARGIN_S
        self._stopping = True
        self.health.enter_graceful_shutdown()
        # Frontends drain alongside: a call they forwarded already is this server's to finish.
        frontends = threading.Thread(
            target=self.frontends.stop if self.frontends else lambda grace: None,
            args=(grace,),
            name="frontends-stop",
        )
        frontends.start()
        rest = threading.Thread(
            target=self.rest.stop if self.rest else lambda grace: None,
            args=(grace,),
            name="http-stop",
        )
        rest.start()
        drained = self.grpc.stop(grace)
        self.jobs.shutdown(timeout=grace)
        clean = drained.wait(max(0.0, bound - time.monotonic()))
        # A frontend still draining past the bound exits with this process (its lifeline).
        frontends.join(max(0.0, bound - time.monotonic()))
        rest.join(max(0.0, bound - time.monotonic()))
        self._remove_local_socket()
        if not clean:
            log.warning("RPCs still running %.0f s after the grace period", SHUTDOWN_MARGIN_S)
        self.models.close()
        self.metrics.close()
        self.store.close()
        self.lock.release()
        log.info("stopped")
        return clean

    def wait(self) -> None:
        """Blocks until the gRPC server stops."""
        self.grpc.wait_for_termination()


def _check_free(address: str) -> None:
    """Refuses, with one clear line, an address whose port another process listens on; gRPC
    would refuse it too (without SO_REUSEPORT), but only after logging a C-core error."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        resolved = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return  # gRPC reports an address it cannot resolve
    for family, kind, proto, _, where in resolved:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as err:
                why = (err.strerror or str(err)).lower()
                raise StartupError(
                    f"cannot listen on {address}: {why} (another torchwire server?)"
                ) from None


def create_server(config: ServerConfig) -> tuple[TorchwireServer, int]:
    """Builds (but does not start) the server; returns it and the port it bound."""
    server = TorchwireServer(config)
    return server, server.port
