"""The worker process: runs one training job and reports over a pipe.

It never touches the registry; the job manager in the server records what it sends, typed
values all (`WorkerMessage`): the events as training goes, then a `FitOutcome` or a
`WorkerError`.
A distributed job's worker is the elastic agent of its machine: it launches the training
processes (ranks) and the writer rank sends the events over the same pipe.
"""

import logging
import os
import select
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as CancelFlag
from pathlib import Path
from typing import Any

import torch

from torchwire.service.core import distributed
from torchwire.service.core.device import choose_device
from torchwire.service.core.events import Event, FitResult, to_payload
from torchwire.service.core.pipeline import DataPipeline
from torchwire.service.core.spec import TrainSpec
from torchwire.service.core.training import Trainer
from torchwire.service.errors import TorchwireError

ORPHAN_EXIT_CODE = 70


class Lifeline:
    """Ties this process to another one (the server, or a rank's launcher): the moment that
    process ends, kill -9 included, this one exits, so an orphan never writes checkpoints
    beside the worker of a resumed job.

    A pidfd (Linux >= 5.3) becomes readable when its process ends: a thread blocked on it
    exits this process at once, and `gone()` answers with one non-blocking poll, which the
    trainer asks before every batch and before it writes a checkpoint. Not PR_SET_PDEATHSIG:
    that signal fires when the spawning *thread* ends, and the server's threads come and go.
    """

    def __init__(self, pid: int) -> None:
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            os._exit(ORPHAN_EXIT_CODE)  # already gone
        threading.Thread(target=self._watch, name="lifeline", daemon=True).start()

    def gone(self) -> bool:
        """True once the process has ended."""
        return bool(select.select([self._fd], [], [], 0)[0])

    def _watch(self) -> None:
        select.select([self._fd], [], [])
        os._exit(ORPHAN_EXIT_CODE)


@dataclass(frozen=True)
class FitOutcome:
    """What a finished (or stopped) training reports to the server, over the pipe."""

    cancelled: bool
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    metrics: dict[str, float]
    history: list[dict[str, Any]]

    @classmethod
    def of(cls, result: FitResult) -> "FitOutcome":
        return cls(
            result.cancelled,
            result.best_epoch,
            len(result.history),
            result.stopped_early,
            result.best_metrics,
            [to_payload(record) for record in result.history],
        )


@dataclass(frozen=True)
class WorkerError:
    """The reason a training failed, over the pipe."""

    reason: str


WorkerMessage = Event | FitOutcome | WorkerError
"""What a worker sends: events as training goes, then its outcome or its error."""


def _sender(conn: Connection | None) -> Callable[[Event], None]:
    def emit(event: Event) -> None:
        if conn is not None:
            conn.send(event)

    return emit


@dataclass(frozen=True)
class RankTask:
    """What every training process of a distributed job on one machine gets (picklable).

    Attributes:
        job_id: the job, and the rendezvous' run id.
        spec: the job's spec.
        pipeline: the data, resolved on this machine.
        checkpoint_dir: where the writer keeps `best.pt` and `last.pt`.
        init_from: a checkpoint to fine-tune from, read by the writer.
        conn: the pipe to the server (None on other machines).
        cancel: the server's cancel flag (None on other machines).
        coordinator: True on the server's machine, whose local rank 0 is the writer.
    """

    job_id: str
    spec: TrainSpec
    pipeline: DataPipeline
    checkpoint_dir: str
    init_from: str | None
    conn: Connection | None
    cancel: CancelFlag | None
    coordinator: bool


def train_rank(task: RankTask) -> FitOutcome | None:
    """Entry point of one training process of a distributed job, started by the launcher.

    It resumes from the job's `last.pt` when there is one, so that an elastic restart goes on
    from the last checkpoint. Returns the outcome on the writer rank, None on the others.
    """
    lifeline = Lifeline(os.getppid())  # the launcher, which follows the server
    rank = distributed.Rank.from_environment(task.coordinator)
    spec = task.spec
    assert spec.distributed is not None
    device = choose_device(spec.config.device)
    backend = spec.distributed.check_device(device)
    if device.type == "cpu":
        # Share the cores, as torchrun's OMP_NUM_THREADS does: each rank's own pool of
        # all the cores would oversubscribe them nproc_per_node times.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.distributed.nproc_per_node))
    last = Path(task.checkpoint_dir) / "last.pt"
    cancel = task.cancel
    own_device = torch.device("cuda", rank.local_rank) if device.type == "cuda" else device
    with distributed.process_group(backend, own_device):
        trainer = Trainer(
            spec,
            task.pipeline,
            Path(task.checkpoint_dir),
            _sender(task.conn),
            should_stop=lambda: lifeline.gone() or (cancel is not None and cancel.is_set()),
            resume_from=last if rank.writer and last.exists() else None,
            init_from=Path(task.init_from) if task.init_from else None,
            rank=rank,
        )
        result = trainer.run()
    return FitOutcome.of(result) if rank.writer else None


def launch_ranks(task: RankTask) -> FitOutcome | None:
    """Runs this machine's share of a distributed job through the elastic launcher; returns
    the writer's outcome (None on the other machines).

    Raises:
        TorchwireError: a training process failed (more often than max_restarts allows).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    spec = task.spec
    assert spec.distributed is not None
    try:
        outcomes = distributed.launch(
            spec.distributed, task.job_id, task.coordinator, train_rank, task
        )
    except ChildFailedError as err:
        global_rank, failure = err.get_first_failure()
        # The message is the rank's exception, read back from its error file as a dict.
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", "")
        why = (
            f"killed by {failure.signal_name()}"
            if failure.exitcode < 0
            else (message or f"exited with code {failure.exitcode}")
        )
        raise TorchwireError(
            f"distributed training failed: rank {global_rank} (local rank "
            f"{failure.local_rank}, pid {failure.pid}) {why}"
        ) from err
    return next((o for o in outcomes.values() if o is not None), None)


def run_job(
    job_id: str,
    spec: TrainSpec,
    pipeline: DataPipeline,
    checkpoint_dir: str,
    resume_from: str | None,
    init_from: str | None,
    conn: Connection,
    cancel: CancelFlag,
    server_pid: int,
) -> None:
    """Entry point of a worker process: trains (resumes, or fine-tunes from `init_from`),
    in this process or in the ranks of a distributed job, checkpoints and reports.

    It lives only as long as the server with `server_pid` (not its parent, the forkserver,
    which outlives a killed server by seconds)."""
    lifeline = Lifeline(server_pid)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    try:
        if spec.distributed is not None:
            task = RankTask(job_id, spec, pipeline, checkpoint_dir, init_from, conn, cancel, True)
            outcome = launch_ranks(task)
        else:
            trainer = Trainer(
                spec,
                pipeline,
                Path(checkpoint_dir),
                _sender(conn),
                should_stop=lambda: cancel.is_set() or lifeline.gone(),
                resume_from=Path(resume_from) if resume_from else None,
                init_from=Path(init_from) if init_from else None,
            )
            outcome = FitOutcome.of(trainer.run())
        conn.send(outcome)
    except TorchwireError as err:
        conn.send(WorkerError(err.message))
    except Exception as err:
        traceback.print_exc()
        conn.send(WorkerError(f"training failed: {type(err).__name__}: {err}"))
    finally:
        conn.close()
