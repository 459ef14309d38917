"""The job manager: a bounded queue of training jobs, each run in its own worker process.

Training never runs on an RPC thread: a crashing job cannot take the server down,
and Predict stays responsive while jobs train. Worker processes report over a
pipe; one follower thread per running job records what they send in the
registry's event log and wakes the watchers.
"""

import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from torchwire.service import logs
from torchwire.service.core import events
from torchwire.service.core.checkpoint import load_checkpoint
from torchwire.service.core.compatibility import check_compatible
from torchwire.service.core.device import choose_device
from torchwire.service.core.jobstates import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
)
from torchwire.service.core.pipeline import DataPipeline, prepare
from torchwire.service.core.spec import TrainSpec
from torchwire.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TorchwireError,
    Unavailable,
    shown,
)
from torchwire.service.store import Store
from torchwire.service.store.registry import EventRecord, JobRecord
from torchwire.service.worker import run_job

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0
"""How long CancelJob lets a worker stop by itself before terminating it."""
FOLLOWER_JOIN_S = 2.0
"""How long shutdown waits for a killed worker's follower to record the job's end."""
CLIENT_CANCEL = "cancelled by client"
SHUTDOWN = "server shutdown"
_LOGGED = frozenset(
    cls.kind
    for cls in (
        events.Queued,
        events.Started,
        events.Finished,
        events.Failed,
        events.Cancelled,
        events.Interrupted,
    )
)
_END_STATES = {
    events.Finished: SUCCEEDED,
    events.Failed: FAILED,
    events.Cancelled: CANCELLED,
    events.Interrupted: INTERRUPTED,
}


@dataclass
class _Run:
    """A running job's process and the ends of its pipe."""

    process: Any
    conn: Connection
    cancel: Any
    pipeline: DataPipeline
    model_name: str
    cancel_reason: str = ""
    follower: threading.Thread | None = field(default=None)


class JobManager:
    """Queues, runs, cancels and records training jobs.

    Args:
        store: where jobs, events, checkpoints and models are recorded.
        max_concurrent: jobs that train at once.
        max_queued: jobs that may wait for a slot; beyond it Train is RESOURCE_EXHAUSTED.
        on_epoch: told (model name, epoch metrics) after every epoch, for metrics.
        multi_node: whether distributed jobs may span machines.
    """

    def __init__(
        self,
        store: Store,
        max_concurrent: int,
        max_queued: int,
        on_epoch: Callable[[str, dict[str, Any]], None] = lambda model, metrics: None,
        multi_node: bool = False,
    ) -> None:
        self.multi_node = multi_node
        self.store = store
        self.on_epoch = on_epoch
        self.registry = store.registry
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        # Workers fork from a forkserver that has imported torch and the training core once:
        # a job starts in a fraction of a second instead of importing torch anew. The
        # forkserver is single-threaded and never touches CUDA, so forking from it is safe
        # (unlike forking this threaded gRPC server).
        self._context = multiprocessing.get_context("forkserver")
        # torchvision's transforms too: importing it costs about 1.5 s (it loads torch._dynamo),
        # paid once here rather than by every job with transforms.
        self._context.set_forkserver_preload(
            ["torchwire.service.worker", "torchvision.transforms.v2"]
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._generation = 0
        self._queue: deque[tuple[str, DataPipeline]] = deque()
        self._running: dict[str, _Run] = {}
        self._stopping = False
        self._recover()

    def _recover(self) -> None:
        """Jobs that were active when the server last stopped cannot still be running: they are
        interrupted, and ResumeJob continues them from their last checkpoint."""
        for job in self.registry.active_jobs():
            reason = f"the server stopped while the job was {job.state}"
            epoch = self._backfill(job.id)
            self._end(job.id, events.Interrupted(reason, epoch))

    def _last_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        """The job's `last.pt`, None when it has none (or none readable)."""
        last = self.store.layout.job_dir(job_id) / "last.pt"
        try:
            return load_checkpoint(last) if last.exists() else None
        except TorchwireError:
            return None

    def _checkpoint_epoch(self, job_id: str) -> int:
        """The epoch of the job's last checkpoint, 0 when it has none."""
        state = self._last_checkpoint(job_id)
        return int(state["epoch"]) if state is not None else 0

    def _backfill(self, job_id: str) -> int:
        """Records the epochs that the last checkpoint holds and the event log lacks, so that
        the learning curve has no holes; returns the checkpoint's epoch (0: none).

        A worker writes an epoch's checkpoint before it reports the epoch: a server (or
        worker) that dies in between leaves a checkpointed epoch that was never logged, and a
        resumed job goes on after it.
        """
        state = self._last_checkpoint(job_id)
        if state is None:
            return 0
        logged = {metrics["epoch"] for metrics in self.history(job_id)}
        epochs = TrainSpec.from_dict(self.get(job_id).request).config.epochs
        for record in state.get("history", []):
            if record["epoch"] not in logged:
                missing = events.EpochEnd(events.EpochRecord(**record), 0.0, epochs)
                self._record(job_id, missing)
        return int(state["epoch"])

    # --------------------------------------------------------------- requests

    def _pipeline(self, spec: TrainSpec) -> DataPipeline:
        """The job's data with its preprocessing, validated against the first sample."""
        source = self.store.datasets.locate(spec.dataset, spec.split, spec.source)
        return prepare(source, spec.transforms, spec.eval_transforms)

    def submit(self, spec: TrainSpec) -> JobRecord:
        """Validates a job against its data and queues it.

        Raises:
            InvalidArgument / NotFound: the dataset, transforms, model, loss, device or the
                version to start from does not fit.
            ResourceExhausted: every slot is busy and the queue is full.
            Unavailable: the server is shutting down.
        """
        pipeline = self._pipeline(spec)
        model_config = check_compatible(spec, pipeline.info)
        device = choose_device(spec.config.device)
        if spec.distributed is not None:
            spec.distributed.check_device(device)
            if spec.distributed.nnodes > 1 and not self.multi_node:
                raise InvalidArgument.field(
                    "distributed.nnodes",
                    spec.distributed.nnodes,
                    "this server trains on its own machine only; start it with --multi-node "
                    "to accept jobs that span machines",
                )
        if spec.init_from is not None:
            spec = replace(spec, init_from=self._check_init(spec, model_config.to_dict()))
        with self._lock:
            self._check_capacity()
            job_id = uuid.uuid4().hex[:16]
            self.registry.create_job(job_id, spec.model_name, spec.to_dict())
            self._enqueue(job_id, pipeline)
        return self.get(job_id)

    def _check_init(self, spec: TrainSpec, built: dict[str, Any]) -> tuple[str, int]:
        """The version to fine-tune from, resolved; it must build the same architecture."""
        assert spec.init_from is not None
        name, version = spec.init_from
        record = self.store.versions.get(name, version, "init_from.name")
        self.store.versions.verified_checkpoint(record)
        trained = TrainSpec.from_dict(record.metadata["training"])
        mine = (spec.architecture, spec.params, built["input_shape"])
        theirs = (trained.architecture, trained.params, record.metadata["input_shape"])
        if mine != theirs:
            raise InvalidArgument.field(
                "init_from",
                f"{name} v{record.version}",
                f"is a {theirs[0]} {theirs[1]} on inputs {theirs[2]}; this job builds a "
                f"{mine[0]} {mine[1]} on inputs {mine[2]}",
            )
        return name, record.version

    def resume(self, job_id: str) -> JobRecord:
        """Queues an ended job again; it continues from its last checkpoint, if it has one.

        Raises:
            NotFound: no job has this id, or its dataset is gone.
            FailedPrecondition: the job is queued, running or has succeeded.
            ResourceExhausted / Unavailable: as for `submit`.
        """
        spec = TrainSpec.from_dict(self.get(job_id).request)
        pipeline = self._pipeline(spec)
        with self._lock:
            # Checked under the lock: two concurrent resumes must not both queue the job.
            state = self.get(job_id).state
            if state in (*ACTIVE_STATES, SUCCEEDED):
                raise FailedPrecondition(
                    f"job {shown(job_id)} is {state}; only interrupted, cancelled or failed jobs "
                    "can be resumed"
                )
            self._check_capacity()
            self._backfill(job_id)
            self.registry.update_job(job_id, state=QUEUED, finished_at=None, error="")
            self._enqueue(job_id, pipeline)
        return self.get(job_id)

    def _check_capacity(self) -> None:
        """Called with `_lock` held, before a job is queued."""
        if self._stopping:
            raise Unavailable("the server is shutting down; no new jobs are accepted")
        if len(self._running) >= self.max_concurrent and len(self._queue) >= self.max_queued:
            raise ResourceExhausted(
                f"max_queued_jobs={self.max_queued} jobs already wait for "
                f"max_concurrent_jobs={self.max_concurrent} busy slots"
            )

    def _enqueue(self, job_id: str, pipeline: DataPipeline) -> None:
        """Called with `_lock` held."""
        self._record(job_id, events.Queued(position=len(self._queue)))
        self._queue.append((job_id, pipeline))
        self._dispatch()

    def get(self, job_id: str) -> JobRecord:
        """The job.

        Raises:
            NotFound: no job has this id.
        """
        job = self.registry.get_job(job_id)
        if job is None:
            raise NotFound(f"job {shown(job_id)} does not exist")
        return job

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's per-epoch metrics so far, from its event log."""
        return [e.payload["metrics"] for e in self.registry.events(job_id, kind="epoch_end")]

    def cancel(self, job_id: str, reason: str = CLIENT_CANCEL) -> JobRecord:
        """Cancels a queued job at once, or stops a running one after its current batch.

        Raises:
            NotFound: no job has this id.
            FailedPrecondition: the job has already ended.
        """
        job = self.get(job_id)
        with self._lock:
            queued = next((entry for entry in self._queue if entry[0] == job_id), None)
            if queued is not None:
                self._queue.remove(queued)
                self._end(job_id, events.Cancelled(reason))
                return self.get(job_id)
            run = self._running.get(job_id)
            if run is None:
                raise FailedPrecondition(f"job {shown(job_id)} has already ended: {job.state}")
            run.cancel_reason = run.cancel_reason or reason
            run.cancel.set()
        if not self.wait(job_id, CANCEL_WAIT_S) and run.process.pid is not None:
            log.warning("job %s did not stop within %.0f s; terminating it", job_id, CANCEL_WAIT_S)
            run.process.terminate()
            self.wait(job_id, CANCEL_WAIT_S)
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float) -> bool:
        """Blocks until the job has ended or `timeout` passes; True when it has ended."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.get(job_id).state in ACTIVE_STATES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def watch(
        self, job_id: str, after_seq: int = 0, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[EventRecord]:
        """Yields the job's events after `after_seq`, then new ones as they come, until the job
        is no longer queued or running and every event has been yielded.

        Stops early when `is_active()` turns False (the client went away).
        """
        self.get(job_id)
        while is_active():
            with self._changed:
                seen = self._generation
            # The state is read before the events: a job's end and its last event are
            # committed together, so an ended job's events are all in the next read.
            ended = self.get(job_id).state not in ACTIVE_STATES
            records = self.registry.events(job_id, after_seq)
            for record in records:
                yield record
                after_seq = record.seq
            if ended and not records:
                return
            with self._changed:
                if self._generation == seen and not ended:
                    self._changed.wait(timeout=1.0)

    def shutdown(self, timeout: float) -> None:
        """Cancels queued jobs, stops running ones (keeping their checkpoints), joins workers."""
        with self._lock:
            self._stopping = True
            queued = [job_id for job_id, _ in self._queue]
            self._queue.clear()
            runs = list(self._running.values())
            for run in runs:
                run.cancel_reason = SHUTDOWN
                run.cancel.set()
        for job_id in queued:
            self._end(job_id, events.Interrupted(SHUTDOWN))
        deadline = time.monotonic() + timeout
        for run in runs:
            # The follower ends once the worker has exited and the job's end is recorded.
            assert run.follower is not None
            run.follower.join(max(0.0, deadline - time.monotonic()))
            if run.follower.is_alive() and run.process.pid is not None:
                run.process.kill()  # closes the pipe, which ends the follower
                run.follower.join(FOLLOWER_JOIN_S)

    # --------------------------------------------------------------- internals

    def _end(self, job_id: str, event: events.Event, **job_fields: Any) -> None:
        """Records a terminal event together with the job's final state and reason."""
        self._record(
            job_id,
            event,
            state=_END_STATES[type(event)],
            finished_at=time.time(),
            error=getattr(event, "reason", ""),
            **job_fields,
        )

    def _record(self, job_id: str, event: events.Event, **job_fields: Any) -> None:
        self._append(job_id, event.kind, events.to_payload(event), **job_fields)

    def _append(self, job_id: str, kind: str, payload: dict[str, Any], **job_fields: Any) -> None:
        self.registry.append_event(job_id, kind, payload, **job_fields)
        if kind in _LOGGED:
            with logs.bound(logs.job_id, job_id):
                log.info("job %s: %s", kind, payload)
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _dispatch(self) -> None:
        """Starts queued jobs while slots are free. Called with `_lock` held."""
        while self._queue and len(self._running) < self.max_concurrent and not self._stopping:
            job_id, pipeline = self._queue.popleft()
            job = self.get(job_id)
            checkpoint_dir = self.store.layout.job_dir(job_id)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            last = checkpoint_dir / "last.pt"
            resume_from = str(last) if last.exists() else None
            init = job.request.get("init_from")
            init_from = str(self.store.layout.model_checkpoint(*init)) if init else None
            receiver, sender = self._context.Pipe(duplex=False)
            cancel = self._context.Event()
            process = self._context.Process(
                target=run_job,
                args=(
                    job_id,
                    job.request,
                    pipeline,
                    str(checkpoint_dir),
                    resume_from,
                    init_from,
                    sender,
                    cancel,
                    os.getpid(),
                ),
                name=f"torchwire-job-{job_id}",
            )
            run = _Run(process, receiver, cancel, pipeline, job.model_name)
            self._running[job_id] = run
            self.registry.update_job(job_id, state=RUNNING, started_at=time.time())
            run.follower = threading.Thread(
                target=self._follow,
                args=(job_id, run, sender),
                name=f"follow-{job_id}",
                daemon=True,
            )
            run.follower.start()

    def _follow(self, job_id: str, run: _Run, sender: Connection) -> None:
        """Starts the worker, records what it sends until its pipe closes, then ends the job.

        The start is here, not on the request's thread: Train returns once the job is
        recorded, even while the forkserver is still importing torch for its first job.
        """
        result: dict[str, Any] | None = None
        try:
            run.process.start()
        except Exception as err:
            log.exception("job %s: its worker process could not start", job_id)
            error = f"the worker process could not start: {err}"
        else:
            sender.close()  # the worker holds the only write end: its exit is our EOF
            result, error = self._receive(job_id, run)
            run.process.join()
        finally:
            sender.close()
            run.conn.close()
        try:
            self._conclude(job_id, run, result, error)
        except Exception:
            log.exception("job %s: recording its end failed", job_id)
            self._end(job_id, events.Failed("internal error while finishing the job"))
        with self._lock:
            del self._running[job_id]
            self._dispatch()

    def _receive(self, job_id: str, run: _Run) -> tuple[dict[str, Any] | None, str]:
        """Records the worker's events until its pipe closes; its result, or its error."""
        result: dict[str, Any] | None = None
        error = ""
        while True:
            try:
                message = run.conn.recv()
            except (EOFError, OSError):
                return result, error
            if message[0] == "event":
                _, kind, payload = message
                fields = {"device": payload["device"]} if kind == events.Started.kind else {}
                self._append(job_id, kind, payload, **fields)
                if kind == events.EpochEnd.kind:
                    self.on_epoch(run.model_name, payload["metrics"])
            elif message[0] == "result":
                result = message[1]
            else:
                error = message[1]

    def _conclude(self, job_id: str, run: _Run, result: dict[str, Any] | None, error: str) -> None:
        if run.cancel_reason == SHUTDOWN and (result is None or result["cancelled"]):
            self._end(job_id, events.Interrupted(SHUTDOWN, self._checkpoint_epoch(job_id)))
            return
        if run.cancel_reason and (result is None or result["cancelled"]):
            self._end(job_id, events.Cancelled(run.cancel_reason))
            return
        if result is None or result["cancelled"] or not result["best_epoch"]:
            reason = error or f"the worker process exited with code {run.process.exitcode}"
            self._end(job_id, events.Failed(reason))
            return
        job = self.get(job_id)
        info = run.pipeline.info
        spec = TrainSpec.from_dict(job.request)
        metadata = {
            "task": info.task,
            "input_shape": list(info.feature_shape),
            "input_dtype": info.feature_dtype,
            "output_size": spec.config.objective.output_size(info),
            "classes": list(info.classes),
            "eval_transforms": list(run.pipeline.eval_transforms),
            "image_mode": run.pipeline.source.image_mode,
            "metrics": result["metrics"],
            "training": job.request,
            "best_epoch": result["best_epoch"],
            "history": result["history"],
        }
        checkpoint = self.store.layout.job_dir(job_id) / "best.pt"
        version = self.store.versions.register(job.model_name, job_id, checkpoint, metadata)
        finished = events.Finished(
            model_name=job.model_name,
            model_version=version,
            best_epoch=result["best_epoch"],
            epochs_run=result["epochs_run"],
            stopped_early=result["stopped_early"],
            metrics=result["metrics"],
        )
        self._end(job_id, finished, model_version=version, best_epoch=result["best_epoch"])
