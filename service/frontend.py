"""A frontend process: more Python interpreters for Predict, on the server's own port.

One interpreter's GIL bounds how many Predicts a server can parse, run and answer: past a few
thousand a second its RPC threads mostly wait for one another. With `--frontends N` the
server starts N frontend processes that listen on the same port (SO_REUSEPORT: the kernel
spreads connections over the server and its frontends). Each frontend serves Predict,
PredictStream and the v2 ModelInfer itself, and health checks: it parses, checks and answers
them, and runs fast models in runtimes of its own loaded from the store's files, while
batched models that are slow enough to gain from merging, and every batched model on a GPU,
run in the server's one batcher for all processes (`app.runner`). Every other method is
forwarded, as bytes, to the server, the store's only writer (`api.forwarding`).

The server tells its frontends, over a control connection, when what they hold goes stale
(an export, a batching change, a deletion, a new latest version) and waits for their
acknowledgement, so a change answered to one client is seen by the next Predict on any
connection. It collects their metrics into its /metrics, replaces a frontend that dies, and
stops them at shutdown; a frontend whose server dies exits at once (a pidfd lifeline).
"""

import logging
import os
import signal
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.connection import Connection

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from torchwire.defaults import channel_options
from torchwire.kserve import grpc_predict_v2_pb2 as v2
from torchwire.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from torchwire.service.api.forwarding import forward_call, forwarder
from torchwire.service.api.listening import bind, server_options, serving_wrappers
from torchwire.service.api.methods import Registrar, chain, split
from torchwire.service.api.metrics import ServiceMetrics
from torchwire.service.api.servicer import PredictionServicer
from torchwire.service.api.v2 import InferenceServicer
from torchwire.service.app.catalog import Catalog
from torchwire.service.app.inference_types import SHM_REGION
from torchwire.service.app.open_inference import OpenInference
from torchwire.service.app.runner import Runner
from torchwire.service.app.serving import ModelService
from torchwire.service.app.shared_memory import SharedMemoryRegistry
from torchwire.service.app.worker_process import Lifeline
from torchwire.service.config import ServerConfig
from torchwire.service.core.batching import BatchingConfig
from torchwire.service.core.runtimes import RuntimeOptions
from torchwire.service.store import Store
from torchwire.v1 import torchwire_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVED_HERE = frozenset(
    {
        "/torchwire.v1.TorchWire/Predict",
        "/torchwire.v1.TorchWire/PredictStream",
        INFER,
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)
"""Methods a frontend answers itself; it forwards the others to the server."""


@dataclass(frozen=True)
class FrontendSetup:
    """What the server sends a frontend it starts, first thing on the control connection."""

    config: ServerConfig
    address: str
    """host:port the server bound: the frontend binds it too."""
    primary: str
    """The server's local gRPC target (a Unix socket) for forwarded calls."""
    primary_pid: int


def model_service(config: ServerConfig, store: Store, metrics: ServiceMetrics) -> ModelService:
    """The models as the configuration says to serve them: the server's and each frontend's."""
    return ModelService(
        store,
        config.max_loaded_bytes,
        BatchingConfig(config.batching, config.max_batch_size, config.max_batch_delay_ms),
        RuntimeOptions(
            config.ort_intra_op_threads,
            config.ort_cudnn_conv_algo_search,
            config.cuda_tf32,
            config.cuda_graphs,
            config.inference_precision,
        ),
        config.buckets,
        config.max_predict_rows,
        config.shared_run_ms / 1000,
        metrics.run_observer,
    )


class FrontendServer:
    """The frontend's gRPC server: Predict served here, everything else forwarded."""

    def __init__(self, setup: FrontendSetup, runner: Runner) -> None:
        config = setup.config
        self.metrics = ServiceMetrics()
        self.health = health.HealthServicer()
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.rpc_threads, thread_name_prefix="rpc"),
            options=server_options(config.max_message_bytes, share_port=True),
        )
        if not bind(self.grpc, setup.address, config):
            raise RuntimeError(f"frontend: cannot bind {setup.address}")
        self.store = Store(config.store_dir, config.max_upload_bytes, config.data_root_paths, False)
        self.models = model_service(config, self.store, self.metrics)
        self.runner = self.models.runner = runner
        self.metrics.watch(self.models.queued, self.models.loaded_here, lambda state: 0)
        self.upstream = grpc.insecure_channel(
            setup.primary, options=channel_options(config.max_message_bytes)
        )
        registrar = Registrar(
            self.grpc,
            split(
                SERVED_HERE,
                chain(serving_wrappers(self.metrics, config)),
                forwarder(self.upstream),
            ),
        )
        catalog = Catalog(self.store, self.models)
        pb_grpc.add_TorchWireServicer_to_server(PredictionServicer(self.models), registrar)
        plane = OpenInference(catalog, self.models, SharedMemoryRegistry(), lambda: True)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(
            FrontendInferenceServicer(plane, self.upstream), registrar
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)

    def start(self) -> None:
        self.grpc.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def forget(self, name: str, version: int | None) -> None:
        """Drops what this process holds of a model: with a version (0: all of them), its
        loaded runtimes; in any case, its remembered latest version."""
        self.store.versions.forget_latest(name)
        if version is not None:
            self.models.forget(name, version)

    def stop(self, grace: float) -> None:
        self.health.enter_graceful_shutdown()
        self.grpc.stop(grace).wait(grace + 3.0)
        self.models.close()
        self.runner.close()
        self.upstream.close()
        self.store.close()


class FrontendInferenceServicer(InferenceServicer):
    """ModelInfer served here, but for requests that name shared-memory regions: the server
    holds the regions (it answered their registration), so those are forwarded to it."""

    def __init__(self, plane: OpenInference, upstream: grpc.Channel) -> None:
        super().__init__(plane)
        self._upstream = upstream.unary_unary(INFER)

    def ModelInfer(self, request, context):
        tensors = [*request.inputs, *request.outputs]
        if not any(SHM_REGION in tensor.parameters for tensor in tensors):
            return super().ModelInfer(request, context)
        answer = forward_call(self._upstream, request.SerializeToString(), context)
        return v2.ModelInferResponse.FromString(answer)


def run(conn: Connection, runs: Connection) -> int:
    """A frontend's life: set up from the server's first message, serve, and answer the
    server's requests (forget, metrics, stop) until it says stop or goes away. Batched
    models run in the server, their pieces sent over `runs`."""
    setup: FrontendSetup = conn.recv()
    # Ctrl-C reaches the whole process group: the server decides when its frontends stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Lifeline(setup.primary_pid)
    try:
        server = FrontendServer(setup, Runner(runs))
    except Exception as err:
        conn.send(("failed", str(err)))
        return 1
    server.start()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the server is gone; the lifeline exits too
            return 1
        kind = request[0]
        if kind == "forget":
            server.forget(request[1], request[2])
            conn.send(("ok",))
        elif kind == "metrics":
            conn.send(("metrics", generate_latest(server.metrics.registry)))
        elif kind == "statistics":
            conn.send(("statistics", server.models.statistics.snapshot()))
        elif kind == "stop":
            server.stop(request[1])
            conn.send(("stopped",))
            return 0
