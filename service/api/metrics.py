"""Prometheus metrics for the whole server: every gRPC request (torchwire.v1 and the v2
protocol alike), model runs, loaded models, jobs and training, on an HTTP /metrics endpoint."""

import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

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
        self.http_requests = Counter(
            "torchwire_http_requests",
            "HTTP (v2 REST) requests handled.",
            ["route", "code"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "torchwire_http_request_seconds",
            "HTTP (v2 REST) request latency.",
            ["route"],
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

    def http_series(self, route: str) -> tuple[Callable[[int], Any], Any]:
        """For an HTTP route (its template, not the path): the request counter of a status
        code, and the latency histogram."""
        return (
            lambda code: self.http_requests.labels(route, str(code)),
            self.http_latency.labels(route),
        )

    def run_observer(self, model: str, runtime: str) -> Callable[[int, float], None]:
        """What to tell the size and time of each run of a model in a runtime."""
        series = self.batch_size.labels(model, runtime)
        return lambda rows, seconds: series.observe(rows)

    def observe_epoch(self, model: str, metrics: dict[str, Any]) -> None:
        self.samples_per_second.labels(model).set(metrics["samples_per_second"])
        self.epoch_seconds.labels(model).observe(metrics["seconds"])

    def serve(self, address: str, others: Callable[[], list[bytes]] | None = None) -> int:
        """Serves /metrics over HTTP on host:port (port 0 picks one); returns the port.

        Args:
            others: the metrics of other processes (frontends) in Prometheus' text format,
                summed into this process' own at every scrape.
        """
        host, port = address.rsplit(":", 1)
        registry = self.registry
        if others is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Summed(self.registry, others))
        server, _ = start_http_server(int(port), host, registry=registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()


class _Summed(Collector):
    """A registry's metrics with other processes' added: samples of the same name and labels
    are summed (counters, histogram buckets, gauges), creation times take the earliest."""

    def __init__(self, own: CollectorRegistry, others: Callable[[], list[bytes]]) -> None:
        self.own = own
        self.others = others

    def collect(self) -> Iterator[Metric]:
        families = {family.name: family for family in self.own.collect()}
        for text in self.others():
            for family in text_string_to_metric_families(text.decode()):
                into = families.setdefault(family.name, family)
                if into is not family:
                    _add(into, family.samples)
        yield from families.values()


def _add(family: Metric, samples: list[Sample]) -> None:
    index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(family.samples)}
    for sample in samples:
        at = index.get((sample.name, tuple(sorted(sample.labels.items()))))
        if at is None:
            family.samples.append(sample)
            continue
        mine = family.samples[at]
        total = (
            min(mine.value, sample.value)
            if sample.name.endswith("_created")
            else mine.value + sample.value
        )
        family.samples[at] = mine._replace(value=total)


def _ending(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """How a call that set no status ended: the client left it (its deadline passed, or it
    cancelled, which closes a response stream), it failed, or it succeeded."""
    if not context.is_active():
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


_REQUEST_IDS = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()


def _request_id(context: grpc.ServicerContext) -> str:
    """The client's `x-request-id`, or a new one unique to this server process."""
    for key, value in context.invocation_metadata():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return f"{_ID_PREFIX}-{next(_REQUEST_IDS):x}"


def measure(
    metrics: ServiceMetrics, method: str, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    """The handler counted by status code and timed; its request id (the client's
    `x-request-id`, or a new one) is bound to the log records it causes, and it is logged at
    DEBUG level. The metric series are looked up once, here, not per call."""
    service, _, name = method.lstrip("/").partition("/")
    latency = metrics.latency.labels(service, name)
    counters: dict[grpc.StatusCode, Any] = {}

    def record(context: grpc.ServicerContext, started: float, failed: bool) -> None:
        seconds = time.perf_counter() - started
        latency.observe(seconds)
        code = context.code() or _ending(context, failed)
        counter = counters.get(code)
        if counter is None:
            counter = counters[code] = metrics.requests.labels(service, name, code.name)
        counter.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s/%s %s in %.2f ms", service, name, code.name, 1000 * seconds)

    def unary(behavior: Callable) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            started, failed = time.perf_counter(), True
            token = logs.request_id.set(_request_id(context))
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                record(context, started, failed)
                logs.request_id.reset(token)

        return wrapper

    def streaming(behavior: Callable) -> Callable:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started, failed = time.perf_counter(), True
            with logs.bound(logs.request_id, _request_id(context)):
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    record(context, started, failed)

        return wrapper

    return rewrap(handler, unary, streaming)
