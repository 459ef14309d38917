"""Another machine's share of a distributed job: `torchwire worker` joins the rendezvous of a
job that a torchwire server runs, with this machine's data and processes."""

import tempfile
from pathlib import Path

from torchwire.service.app.worker_process import RankTask, launch_ranks
from torchwire.service.core.pipeline import prepare
from torchwire.service.core.spec import TrainSpec
from torchwire.service.errors import FailedPrecondition, shown
from torchwire.service.store import Store


def join(
    job_id: str,
    spec: TrainSpec,
    store_dir: Path,
    data_roots: tuple[Path, ...] = (),
    allow_download: bool = False,
) -> None:
    """Trains this machine's ranks of a running distributed job until it ends.

    The data is resolved here, as the server resolved it there: a named dataset from this
    machine's store, a source under this machine's data roots. The server's machine writes the
    checkpoints and records the events; this one only computes.

    Raises:
        FailedPrecondition: the job is not a multi-machine distributed job.
        TorchwireError: the data does not resolve here, or a training process failed.
    """
    if spec.distributed is None or spec.distributed.nnodes < 2:
        raise FailedPrecondition(f"job {shown(job_id)} does not train on several machines")
    store = Store(
        store_dir, max_upload_bytes=1, data_roots=data_roots, allow_download=allow_download
    )
    try:
        source = store.datasets.locate(spec.dataset, spec.split, spec.source)
        pipeline = prepare(source, spec.transforms, spec.eval_transforms)
    finally:
        store.close()
    with tempfile.TemporaryDirectory(prefix=f"torchwire-{job_id}-") as scratch:
        launch_ranks(RankTask(job_id, spec, pipeline, scratch, None, None, None, False))
