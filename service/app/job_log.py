"""A job's event log: events recorded with the job's state, watchers woken, the log replayed,
and the epochs a checkpoint holds that the log lacks filled back in."""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from torchwire.service import logs
from torchwire.service.core import events
from torchwire.service.core.checkpoint import load_checkpoint
from torchwire.service.core.jobstates import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    INTERRUPTED,
    SUCCEEDED,
)
from torchwire.service.core.records import EventRecord, JobRecord
from torchwire.service.errors import NotFound, TorchwireError, shown
from torchwire.service.store import Store

log = logging.getLogger(__name__)

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


class JobLog:
    """The jobs' event logs in the registry, and the condition their watchers wait on.

    Args:
        store: where jobs, their events and their checkpoints are kept.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = store.registry
        self._changed = threading.Condition()
        self._generation = 0

    def recover(self) -> None:
        """Jobs that were active when the server last stopped cannot still be running: they are
        interrupted, and ResumeJob continues them from their last checkpoint."""
        for job in self.registry.active_jobs():
            reason = f"the server stopped while the job was {job.state}"
            epoch = self.backfill(job.id)
            self.end(job.id, events.Interrupted(reason, epoch))

    def _last_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        """The job's `last.pt`, None when it has none (or none readable)."""
        last = self.store.layout.job_dir(job_id) / "last.pt"
        try:
            return load_checkpoint(last) if last.exists() else None
        except TorchwireError:
            return None

    def checkpoint_epoch(self, job_id: str) -> int:
        """The epoch of the job's last checkpoint, 0 when it has none."""
        state = self._last_checkpoint(job_id)
        return int(state["epoch"]) if state is not None else 0

    def backfill(self, job_id: str) -> int:
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
        epochs = self.get(job_id).spec.config.epochs
        for record in state.get("history", []):
            if record["epoch"] not in logged:
                missing = events.EpochEnd(events.EpochRecord(**record), 0.0, epochs)
                self.record(job_id, missing)
        return int(state["epoch"])

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

    def end(self, job_id: str, event: events.Event, **job_fields: Any) -> None:
        """Records a terminal event together with the job's final state and reason."""
        self.record(
            job_id,
            event,
            state=_END_STATES[type(event)],
            finished_at=time.time(),
            error=getattr(event, "reason", ""),
            **job_fields,
        )

    def record(self, job_id: str, event: events.Event, **job_fields: Any) -> None:
        """Appends an event (and sets job columns with it) and wakes the watchers."""
        kind, payload = event.kind, events.to_payload(event)
        self.registry.append_event(job_id, kind, payload, **job_fields)
        if kind in _LOGGED:
            with logs.bound(logs.job_id, job_id):
                log.info("job %s: %s", kind, payload)
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
