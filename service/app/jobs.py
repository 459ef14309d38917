"""The job manager: a bounded queue of training jobs, each run in its own worker process.

Training never runs on an RPC thread: a crashing job cannot take the server down,
and Predict stays responsive while jobs train. Worker processes report over a
pipe; one follower thread per running job records what they send in the
registry's event log and wakes the watchers.
"""

import contextlib
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from torchwire.service.app.job_log import JobLog
from torchwire.service.app.worker_process import FitOutcome, WorkerError, WorkerMessage, run_job
from torchwire.service.core import events
from torchwire.service.core.compatibility import check_compatible
from torchwire.service.core.device import choose_device
from torchwire.service.core.jobstates import (
    ACTIVE_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
)
from torchwire.service.core.pipeline import DataPipeline, prepare
from torchwire.service.core.records import JobRecord, VersionMetadata
from torchwire.service.core.spec import TrainSpec
from torchwire.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    shown,
)
from torchwire.service.store import Store

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0
"""How long CancelJob lets a worker stop by itself before terminating it."""
FOLLOWER_JOIN_S = 2.0
"""How long shutdown waits for a killed worker's follower to record the job's end."""
CLIENT_CANCEL = "cancelled by client"
SHUTDOWN = "server shutdown"


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
        self.job_log = JobLog(store)
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
            ["torchwire.service.app.worker_process", "torchvision.transforms.v2"]
        )
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, DataPipeline]] = deque()
        self._running: dict[str, _Run] = {}
        self._stopping = False
        self.job_log.recover()

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
            self.registry.create_job(job_id, spec)
            self._enqueue(job_id, pipeline)
        return self.job_log.get(job_id)

    def _check_init(self, spec: TrainSpec, built: dict[str, Any]) -> tuple[str, int]:
        """The version to fine-tune from, resolved; it must build the same architecture."""
        assert spec.init_from is not None
        name, version = spec.init_from
        record = self.store.versions.get(name, version, "init_from.name")
        self.store.versions.verified_checkpoint(record)
        architecture = record.metadata.architecture()
        assert architecture is not None  # a version with a checkpoint has a module
        mine = (spec.architecture, spec.params, tuple(built["input_shape"]))
        theirs = (*architecture, record.metadata.input_shape)
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
        spec = self.job_log.get(job_id).spec
        pipeline = self._pipeline(spec)
        with self._lock:
            # Checked under the lock: two concurrent resumes must not both queue the job.
            state = self.job_log.get(job_id).state
            if state in (*ACTIVE_STATES, SUCCEEDED):
                raise FailedPrecondition(
                    f"job {shown(job_id)} is {state}; only interrupted, cancelled or failed jobs "
                    "can be resumed"
                )
            self._check_capacity()
            self.registry.update_job(job_id, state=QUEUED, finished_at=None, error="")
            self._enqueue(job_id, pipeline)
        return self.job_log.get(job_id)

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
        self.job_log.record(job_id, events.Queued(position=len(self._queue)))
        self._queue.append((job_id, pipeline))
        self._dispatch()

    def cancel(self, job_id: str, reason: str = CLIENT_CANCEL) -> JobRecord:
        """Cancels a queued job at once, or stops a running one after its current batch.

        Raises:
            NotFound: no job has this id.
            FailedPrecondition: the job has already ended.
        """
        job = self.job_log.get(job_id)
        with self._lock:
            queued = next((entry for entry in self._queue if entry[0] == job_id), None)
            if queued is not None:
                self._queue.remove(queued)
                self.job_log.end(job_id, events.Cancelled(reason))
                return self.job_log.get(job_id)
            run = self._running.get(job_id)
            if run is None:
                raise FailedPrecondition(f"job {shown(job_id)} has already ended: {job.state}")
            run.cancel_reason = run.cancel_reason or reason
            run.cancel.set()
        if not self.job_log.wait(job_id, CANCEL_WAIT_S) and run.process.pid is not None:
            log.warning("job %s did not stop within %.0f s; terminating it", job_id, CANCEL_WAIT_S)
            run.process.terminate()
            self.job_log.wait(job_id, CANCEL_WAIT_S)
        return self.job_log.get(job_id)

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
            self.job_log.end(job_id, events.Interrupted(SHUTDOWN))
        deadline = time.monotonic() + timeout
        for run in runs:
            # The follower ends once the worker has exited and the job's end is recorded.
            assert run.follower is not None
            run.follower.join(max(0.0, deadline - time.monotonic()))
            if run.follower.is_alive() and run.process.pid is not None:
                run.process.kill()  # closes the pipe, which ends the follower
                run.follower.join(FOLLOWER_JOIN_S)

    # --------------------------------------------------------------- internals

    def _dispatch(self) -> None:
        """Starts queued jobs while slots are free. Called with `_lock` held."""
        while self._queue and len(self._running) < self.max_concurrent and not self._stopping:
            job_id, pipeline = self._queue.popleft()
            job = self.job_log.get(job_id)
            checkpoint_dir = self.store.layout.job_dir(job_id)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            last = checkpoint_dir / "last.pt"
            resume_from = str(last) if last.exists() else None
            init = job.spec.init_from
            init_from = str(self.store.layout.model_checkpoint(*init)) if init else None
            receiver, sender = self._context.Pipe(duplex=False)
            cancel = self._context.Event()
            process = self._context.Process(
                target=run_job,
                args=(
                    job_id,
                    job.spec,
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
        outcome: FitOutcome | None = None
        try:
            run.process.start()
        except Exception as err:
            log.exception("job %s: its worker process could not start", job_id)
            error = f"the worker process could not start: {err}"
        else:
            sender.close()  # the worker holds the only write end: its exit is our EOF
            outcome, error = self._receive(job_id, run)
            run.process.join()
        finally:
            sender.close()
            run.conn.close()
        try:
            self._conclude(job_id, run, outcome, error)
        except Exception:
            log.exception("job %s: recording its end failed", job_id)
            # If even this fails (a store closed by a shutdown that outlasted its bound), the
            # job stays active in the registry, and the next start marks it interrupted.
            with contextlib.suppress(Exception):
                self.job_log.end(job_id, events.Failed("internal error while finishing the job"))
        with self._lock:
            del self._running[job_id]
            self._dispatch()

    def _receive(self, job_id: str, run: _Run) -> tuple[FitOutcome | None, str]:
        """Records the worker's events until its pipe closes; its outcome, or its error."""
        outcome: FitOutcome | None = None
        error = ""
        while True:
            try:
                message: WorkerMessage = run.conn.recv()
            except (EOFError, OSError):
                return outcome, error
            if isinstance(message, FitOutcome):
                outcome = message
            elif isinstance(message, WorkerError):
                error = message.reason
            else:
                device = {}
                if isinstance(message, events.Started):
                    device = {"device": message.device}
                    if message.start_epoch > 1:
                        # A resumed job, or ranks restarted (elastic), going on from last.pt:
                        # an epoch checkpointed but never reported before a death is logged.
                        self.job_log.backfill(job_id)
                self.job_log.record(job_id, message, **device)
                if isinstance(message, events.EpochEnd):
                    self.on_epoch(run.model_name, events.to_payload(message.metrics))

    def _conclude(self, job_id: str, run: _Run, outcome: FitOutcome | None, error: str) -> None:
        stopped = outcome is None or outcome.cancelled
        if run.cancel_reason == SHUTDOWN and stopped:
            self.job_log.end(
                job_id, events.Interrupted(SHUTDOWN, self.job_log.checkpoint_epoch(job_id))
            )
            return
        if run.cancel_reason and stopped:
            self.job_log.end(job_id, events.Cancelled(run.cancel_reason))
            return
        if outcome is None or outcome.cancelled or not outcome.best_epoch:
            reason = error or f"the worker process exited with code {run.process.exitcode}"
            self.job_log.end(job_id, events.Failed(reason))
            return
        job = self.job_log.get(job_id)
        info = run.pipeline.info
        metadata = VersionMetadata(
            task=info.task,
            input_shape=tuple(info.feature_shape),
            input_dtype=info.feature_dtype,
            output_size=job.spec.config.objective.output_size(info),
            classes=tuple(info.classes),
            training=job.spec,
            metrics=outcome.metrics,
            best_epoch=outcome.best_epoch,
            history=tuple(outcome.history),
            eval_transforms=tuple(run.pipeline.eval_transforms),
            image_mode=run.pipeline.source.image_mode,
        )
        checkpoint = self.store.layout.job_dir(job_id) / "best.pt"
        version = self.store.versions.register(
            job.model_name, metadata, job_id=job_id, checkpoint=checkpoint
        )
        finished = events.Finished(
            model_name=job.model_name,
            model_version=version,
            best_epoch=outcome.best_epoch,
            epochs_run=outcome.epochs_run,
            stopped_early=outcome.stopped_early,
            metrics=outcome.metrics,
        )
        self.job_log.end(job_id, finished, model_version=version, best_epoch=outcome.best_epoch)
