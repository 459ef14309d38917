"""Training jobs on the server: follow one's events, wait for it, cancel or resume it."""

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from torchwire.client.messages import history_rows
from torchwire.v1 import torchwire_pb2 as pb

if TYPE_CHECKING:
    from torchwire.client.client import Client

TERMINAL_STATES = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


class JobError(RuntimeError):
    """A job ended FAILED or CANCELLED; `job` is its final state."""

    def __init__(self, job: pb.Job) -> None:
        super().__init__(f"job {job.id} {pb.JobState.Name(job.state)[10:].lower()}: {job.error}")
        self.job = job


class Job:
    """A training job on the server: follow it, wait for it, cancel it."""

    def __init__(self, client: "Client", job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def info(self) -> pb.Job:
        """The job's current state and learning curves."""
        return self.client.stub.GetJob(
            pb.GetJobRequest(job_id=self.id), timeout=self.client.timeout
        )

    def events(self, after_seq: int = 0) -> Iterator[pb.JobEvent]:
        """Streams the job's events (past ones first) until it ends.

        The stream is resumed from the last event seen if the connection drops.
        """
        retries = 0
        while True:
            try:
                for event in self.client.stub.WatchJob(
                    pb.WatchJobRequest(job_id=self.id, after_seq=after_seq)
                ):
                    retries = 0
                    after_seq = event.seq
                    yield event
                return
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or retries >= 5:
                    raise
                retries += 1
                time.sleep(0.2 * 2**retries)

    def wait(self, progress: bool = False, raise_on_failure: bool = True) -> pb.Job:
        """Blocks until the job ends and returns its final state.

        Args:
            progress: draw a tqdm progress bar with loss, accuracy and ETA.
            raise_on_failure: raise `JobError` if the job failed or was cancelled.
        """
        bar = _ProgressBar() if progress else None
        try:
            for event in self.events():
                if bar is not None:
                    bar.update(event)
        finally:
            if bar is not None:
                bar.close()
        job = self.info()
        if raise_on_failure and job.state != pb.JOB_STATE_SUCCEEDED:
            raise JobError(job)
        return job

    def cancel(self) -> pb.Job:
        """Cancels the job; a running one stops after its current batch."""
        return self.client.stub.CancelJob(
            pb.CancelJobRequest(job_id=self.id), timeout=self.client.timeout
        )

    def resume(self) -> pb.Job:
        """Continues an interrupted, cancelled or failed job from its last checkpoint."""
        return self.client.stub.ResumeJob(
            pb.ResumeJobRequest(job_id=self.id), timeout=self.client.timeout
        )

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch learning curves: one dict per epoch (train/val loss and metrics)."""
        return history_rows(self.info().history)


class _ProgressBar:
    """A tqdm bar over epochs, fed by job events."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=None, unit="epoch", desc="queued")

    def update(self, event: pb.JobEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "started":
            # A resumed run starts at a later epoch: the bar starts there too, and its rate
            # counts only the epochs of this run (the events of earlier runs are replayed).
            done = event.started.start_epoch - 1
            self._bar.reset(total=event.started.epochs)
            self._bar.initial = self._bar.n = self._bar.last_print_n = max(0, done)
            self._bar.set_description(f"training on {event.started.device}")
            self._bar.refresh()
        elif kind == "progress":
            p = event.progress
            self._bar.set_postfix_str(f"step {p.step}/{p.steps_per_epoch} loss {p.loss:.4f}")
        elif kind == "epoch_end":
            m = event.epoch_end.metrics
            postfix = {"loss": f"{m.train_loss:.4f}"}
            if m.HasField("val_loss"):
                postfix["val_loss"] = f"{m.val_loss:.4f}"
            postfix.update({f"val_{k}": f"{v:.4f}" for k, v in m.val_metrics.items()})
            postfix["eta"] = f"{event.epoch_end.eta_seconds:.0f}s"
            self._bar.set_postfix(postfix)
            self._bar.update(1)
        elif kind in ("finished", "failed", "cancelled", "interrupted"):
            self._bar.set_description(kind)
            if kind == "finished":
                self._bar.total = event.finished.epochs_run
                self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
