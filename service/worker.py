"""The worker process: runs one training job and reports over a pipe.

It never touches the registry; the job manager in the server records what it sends:
`("event", kind, payload)` as training goes, then `("result", {...})` or `("error", reason)`.
"""

import logging
import os
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as CancelFlag
from pathlib import Path
from typing import Any

from torchwire.service.core.data import DataPipeline
from torchwire.service.core.events import Event, to_payload
from torchwire.service.core.training import Trainer, TrainSpec
from torchwire.service.errors import TorchwireError

PARENT_POLL_S = 0.2


def _exit_with_parent() -> None:
    """Ends this process when the server that spawned it dies (kill -9 included), so that an
    orphan never writes checkpoints beside the worker of a resumed job.

    Polling the parent pid, not PR_SET_PDEATHSIG: that signal fires when the spawning
    *thread* ends, and the server's follower threads end after each job.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(
    spec_dict: dict[str, Any],
    pipeline: DataPipeline,
    checkpoint_dir: str,
    resume_from: str | None,
    init_from: str | None,
    conn: Connection,
    cancel: CancelFlag,
) -> None:
    """Entry point of a spawned worker process: trains (resumes, or fine-tunes from
    `init_from`), checkpoints and reports."""
    _exit_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")

    def emit(event: Event) -> None:
        conn.send(("event", event.kind, to_payload(event)))

    try:
        spec = TrainSpec.from_dict(spec_dict)
        trainer = Trainer(
            spec,
            pipeline,
            Path(checkpoint_dir),
            emit,
            should_stop=cancel.is_set,
            resume_from=Path(resume_from) if resume_from else None,
            init_from=Path(init_from) if init_from else None,
        )
        result = trainer.run()
        conn.send(
            (
                "result",
                {
                    "cancelled": result.cancelled,
                    "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history),
                    "stopped_early": result.stopped_early,
                    "metrics": result.best_metrics,
                    "history": [to_payload(record) for record in result.history],
                },
            )
        )
    except TorchwireError as err:
        conn.send(("error", err.message))
    except Exception as err:
        traceback.print_exc()
        conn.send(("error", f"training failed: {type(err).__name__}: {err}"))
    finally:
        conn.close()
