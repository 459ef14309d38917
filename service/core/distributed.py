"""Distributed data-parallel training: the launch through torch.distributed's elastic launcher
(what `torchrun` uses), and the collective steps the training loop needs on every rank."""

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from torchwire.service.errors import FailedPrecondition, InvalidArgument

BACKENDS = ("gloo", "nccl")
RENDEZVOUS_TIMEOUT_S = 600
"""How long a distributed job waits for every machine to join before it fails."""


def _require(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise InvalidArgument.field(name, value, why)


@dataclass(frozen=True)
class DistributedConfig:
    """How many processes on how many machines, over which backend, meeting where.

    Attributes:
        nproc_per_node: training processes per machine.
        nnodes: machines; the others run `torchwire worker` and join the rendezvous.
        backend: "gloo", "nccl", or "" for nccl on CUDA and gloo elsewhere.
        rdzv_endpoint: host:port of the c10d rendezvous; "" picks a free local port.
        max_restarts: how often the launcher restarts the processes after a failure.
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    backend: str = ""
    rdzv_endpoint: str = ""
    max_restarts: int = 0

    def __post_init__(self) -> None:
        if self.nnodes == 0:
            object.__setattr__(self, "nnodes", 1)
        _require(
            1 <= self.nproc_per_node <= 64,
            "distributed.nproc_per_node",
            self.nproc_per_node,
            "must be in [1, 64]",
        )
        _require(
            1 <= self.nnodes <= 1024, "distributed.nnodes", self.nnodes, "must be in [1, 1024]"
        )
        _require(
            self.backend in ("", *BACKENDS),
            "distributed.backend",
            self.backend,
            f"must be one of {BACKENDS}, or empty to choose",
        )
        _require(
            self.nnodes == 1 or bool(self.rdzv_endpoint),
            "distributed.rdzv_endpoint",
            self.rdzv_endpoint,
            "is required when nnodes > 1: a host:port every machine reaches",
        )
        host, _, port = self.rdzv_endpoint.rpartition(":")
        _require(
            not self.rdzv_endpoint or (bool(host) and port.isdigit() and int(port) < 65536),
            "distributed.rdzv_endpoint",
            self.rdzv_endpoint,
            "must be host:port",
        )
        _require(
            0 <= self.max_restarts <= 10,
            "distributed.max_restarts",
            self.max_restarts,
            "must be in [0, 10]",
        )

    def check_device(self, device: torch.device) -> str:
        """The backend for `device`, after checking that this machine can host the processes.

        Raises:
            InvalidArgument: nccl without CUDA, or more processes than GPUs.
        """
        backend = self.backend or ("nccl" if device.type == "cuda" else "gloo")
        _require(
            backend != "nccl" or device.type == "cuda",
            "distributed.backend",
            backend,
            f"needs CUDA, but the job trains on {device.type}",
        )
        if device.type == "cuda":
            gpus = torch.cuda.device_count()
            _require(
                self.nproc_per_node <= gpus,
                "distributed.nproc_per_node",
                self.nproc_per_node,
                f"exceeds the {gpus} GPUs of this machine",
            )
        return backend


def launch(
    config: DistributedConfig,
    run_id: str,
    coordinator: bool,
    entrypoint: Callable[..., Any],
    *args: Any,
) -> dict[int, Any]:
    """Runs `entrypoint(*args)` in `nproc_per_node` processes through the elastic launcher,
    joining the machines of the same `run_id`; returns each local rank's return value.

    The coordinator (the server's machine) hosts the c10d rendezvous store at
    `rdzv_endpoint`; the other machines connect to it.

    Raises:
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: a process failed
            more often than `max_restarts` allows.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch_config = LaunchConfig(
        min_nodes=config.nnodes,
        max_nodes=config.nnodes,
        nproc_per_node=config.nproc_per_node,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=config.rdzv_endpoint or "127.0.0.1:0",
        rdzv_configs={"join_timeout": RENDEZVOUS_TIMEOUT_S, "is_host": coordinator},
        max_restarts=config.max_restarts,
        monitor_interval=0.2,
        start_method="spawn",
    )
    return elastic_launch(launch_config, entrypoint)(*args)


@dataclass(frozen=True)
class Rank:
    """One process of a distributed job, as the launcher's environment describes it.

    Attributes:
        rank, world_size: the global rank and the number of processes.
        local_rank: the rank on this machine (its GPU index on CUDA).
        writer: whether this process writes checkpoints and sends events: local rank 0 of the
            machine whose server runs the job (its state is every rank's state).
    """

    rank: int
    world_size: int
    local_rank: int
    writer: bool

    @classmethod
    def from_environment(cls, coordinator: bool) -> "Rank":
        """The rank of this process; `coordinator` is True on the server's machine."""
        local_rank = int(os.environ["LOCAL_RANK"])
        return cls(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=local_rank,
            writer=coordinator and local_rank == 0,
        )

    def writer_rank(self, device: torch.device) -> int:
        """The global rank of the writer (collective: every rank must call it).

        A tensor all-reduce, not an object gather: the server's processes never unpickle
        what another machine sends.
        """
        flags = torch.zeros(self.world_size, dtype=torch.int64, device=device)
        flags[self.rank] = int(self.writer)
        dist.all_reduce(flags)
        return int(flags.argmax().item())


GPU_CHECK_TIMEOUT_S = 60.0
"""How long a rank waits for the others to say which GPU they train on."""


def shared_gpus(gpus: list[str]) -> tuple[int, int] | None:
    """The first two ranks (by rank) whose GPU identities are equal; None when every rank
    has a GPU of its own."""
    first: dict[str, int] = {}
    for rank, gpu in enumerate(gpus):
        if gpu in first:
            return first[gpu], rank
        first[gpu] = rank
    return None


def _check_own_gpus(store: dist.Store, rank: int, world_size: int, device: torch.device) -> None:
    """Refuses to start NCCL when two ranks of the job would train on one GPU: two
    nodes on one host, or more processes than GPUs (NCCL would abort with "Duplicate GPU
    detected"). Each rank publishes its GPU's UUID (the same whatever CUDA_VISIBLE_DEVICES
    or container it is seen from) and `host/cuda:N` in the job's store, and reads the others'.

    Raises:
        FailedPrecondition: naming the ranks and the GPU, or a rank that did not answer.
    """
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    store.set(f"gpu/{rank}", f"{uuid} {socket.gethostname()}/{device}")
    keys = [f"gpu/{r}" for r in range(world_size)]
    try:
        store.wait(keys, timedelta(seconds=GPU_CHECK_TIMEOUT_S))
    except Exception as err:  # a rank died before it could say
        raise FailedPrecondition(
            f"not every rank said which GPU it trains on within {GPU_CHECK_TIMEOUT_S:g} s"
        ) from err
    gpus, places = zip(*(store.get(key).decode().split(" ", 1) for key in keys), strict=True)
    clash = shared_gpus(list(gpus))
    if clash is not None:
        first, second = clash
        raise FailedPrecondition(
            f"ranks {first} and {second} would both train on one GPU ({places[first]} and "
            f"{places[second]}): nccl needs a GPU per process; run one node per machine with "
            "nproc_per_node at most its GPUs, or train on the CPU (device=cpu, gloo)"
        )


@contextmanager
def process_group(backend: str, device: torch.device) -> Iterator[None]:
    """Joins the job's process group through the launcher's store, then leaves.

    Each elastic restart gets keys of its own in the store: with the default env://
    initialisation, a restarted gloo rank can read the address a dead rank of the previous
    attempt published and fail to connect to it.

    Raises:
        FailedPrecondition: on nccl, two ranks would share one GPU.
    """
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"torchwire/attempt_{attempt}", store)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if backend == "nccl":
        _check_own_gpus(prefixed, rank, world_size, device)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over every rank."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on one of them."""
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast(value: Any, source: int) -> Any:
    """`value` of rank `source`, on every rank (pickled: `source` must be the trusted
    writer, whose processes unpickle nothing from the others)."""
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def share_start(
    rank: Rank, device: torch.device, data: dict[str, Any], state: dict[str, Any] | None
) -> dict[str, Any]:
    """Checks that every rank sees the writer's `data`, then returns the writer's starting
    `state` (None on the other ranks) on every rank.

    Raises:
        FailedPrecondition: another machine resolved different data (sample count, classes,
            shape): its ranks would run other batches and the collectives would no longer match.
    """
    writer = rank.writer_rank(device)
    theirs = broadcast(data if rank.writer else None, writer)
    if any_rank(data != theirs, device):
        raise FailedPrecondition(
            f"the machines' data differ: the server's machine has {theirs}"
            + ("" if data == theirs else f", this one has {data}")
        )
    return broadcast(state if rank.writer else None, writer)
