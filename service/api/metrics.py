"""Prometheus metrics for the whole server: every gRPC request (torchwire.v1 and the v2
protocol alike), model runs, loaded models, jobs and training, on an HTTP /metrics endpoint."""

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from torchwire.service import logs
from torchwire.service.api.errors import rewrap
from torchwire.service.core.jobstates import JOB_STATES

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


class ServiceMetrics:
    """The server's metrics, in a registry of their own (several servers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "torchwire_grpc_requests",
            "gRPC requests handled.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "torchwire_grpc_request_seconds",
            "gRPC request latency.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "torchwire_model_run_batch_size",
            "Rows per model run (after dynamic batching).",
            ["model", "runtime"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "torchwire_batch_queue_depth",
            "Request pieces waiting in the batchers.",
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "torchwire_models_loaded", "Model runtimes loaded.", registry=self.registry
        )
        self.jobs = Gauge(
            "torchwire_jobs", "Training jobs by state.", ["state"], registry=self.registry
        )
        self.samples_per_second = Gauge(
            "torchwire_training_samples_per_second",
            "Training throughput of the latest epoch.",
            ["model"],
            registry=self.registry,
        )
        self.epoch_seconds = Histogram(
            "torchwire_training_epoch_seconds",
            "Wall time of training epochs.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(
        self, queued: Callable[[], int], loaded: Callable[[], int], jobs_in: Callable[[str], int]
    ) -> None:
        """Gauges read when scraped: batcher queues, loaded models, jobs per state."""
        self.queue_depth.set_function(queued)
        self.models_loaded.set_function(loaded)
        for state in JOB_STATES:
            self.jobs.labels(state).set_function(functools.partial(jobs_in, state))

    def observe_run(self, model: str, runtime: str, rows: int) -> None:
        self.batch_size.labels(model, runtime).observe(rows)

    def observe_epoch(self, model: str, metrics: dict[str, Any]) -> None:
        self.samples_per_second.labels(model).set(metrics["samples_per_second"])
        self.epoch_seconds.labels(model).observe(metrics["seconds"])

    def serve(self, address: str) -> int:
        """Serves /metrics over HTTP on host:port (port 0 picks one); returns the port."""
        host, port = address.rsplit(":", 1)
        server, _ = start_http_server(int(port), host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()


def _ending(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """How a call that set no status ended: the client left it (its deadline passed, or it
    cancelled, which closes a response stream), it failed, or it succeeded."""
    if not context.is_active():
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every request by service, method and status code, and times it; binds its request
    id (the client's `x-request-id`, or a new one) to the log records it causes, and logs it at
    DEBUG level."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        latency = self.metrics.latency.labels(service, method)
        requests = self.metrics.requests
        given = dict(handler_call_details.invocation_metadata or ()).get("x-request-id", "")
        request_id = given[:64] or uuid.uuid4().hex[:16]

        def record(context: grpc.ServicerContext, started: float, failed: bool) -> None:
            seconds = time.perf_counter() - started
            latency.observe(seconds)
            code = context.code() or _ending(context, failed)
            requests.labels(service, method, code.name).inc()
            log.debug("%s/%s %s in %.2f ms", service, method, code.name, 1000 * seconds)

        def unary(behavior: Callable) -> Callable:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
                started, failed = time.perf_counter(), True
                with logs.bound(logs.request_id, request_id):
                    try:
                        response = behavior(request, context)
                        failed = False
                        return response
                    finally:
                        record(context, started, failed)

            return wrapper

        def streaming(behavior: Callable) -> Callable:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started, failed = time.perf_counter(), True
                with logs.bound(logs.request_id, request_id):
                    try:
                        yield from behavior(request, context)
                        failed = False
                    finally:
                        record(context, started, failed)

            return wrapper

        return rewrap(handler, unary, streaming)
