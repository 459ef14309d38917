"""`torchwire serve` / `python -m torchwire.service`: configuration from flags and environment,
then serve until SIGTERM or SIGINT; `torchwire worker` / `python -m torchwire.service worker`:
this machine's share of a distributed job; and `python -m torchwire.service frontend`: a
frontend process, which only its server starts."""

import argparse
import ctypes
import dataclasses
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from torchwire.service import logs
from torchwire.service.config import ServerConfig
from torchwire.service.errors import StartupError

ENV_PREFIX = "TORCHWIRE_"
ALIASES = {"store_dir": ("--store",)}


def _flag(text: str) -> bool:
    """A boolean flag or variable: true/false, yes/no, on/off, 1/0."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def parse_config(argv: list[str]) -> tuple[ServerConfig, tuple[str, str]]:
    """Builds the config: a flag beats its TORCHWIRE_* variable, which beats the default.

    Every ServerConfig field has a flag (`store_dir` -> `--store-dir`) and a variable
    (`TORCHWIRE_STORE_DIR`).
    """
    parser = argparse.ArgumentParser(
        prog="torchwire serve",
        description="Run the torchwire server: gRPC (torchwire.v1 and the v2 protocol), and "
        "optionally v2 REST and Prometheus metrics. Every flag can also be set by its "
        "TORCHWIRE_* variable.",
    )
    helps = _field_help(ServerConfig.__doc__ or "")
    for field in dataclasses.fields(ServerConfig):
        env = ENV_PREFIX + field.name.upper()
        default = os.environ.get(env, field.default)
        kind = _flag if field.type is bool else field.type if callable(field.type) else str
        flags = [f"--{field.name.replace('_', '-')}", *ALIASES.get(field.name, ())]
        # argparse converts string defaults (the environment's) with `type`, reporting errors.
        described = helps.get(field.name, "")
        parser.add_argument(
            *flags,
            type=kind,
            default=default,
            help=f"{described} (env {env}; default {_shown(field.default)})".lstrip(),
        )
    parser.add_argument(
        "--log-level",
        default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get(ENV_PREFIX + "LOG_FORMAT", "text"),
        choices=logs.FORMATS,
        help="text (default) or json: one object per line with request_id and job_id",
    )
    args = vars(parser.parse_args(argv))
    log_level = args.pop("log_level"), args.pop("log_format")
    try:
        return ServerConfig(**args), log_level
    except ValueError as err:
        parser.error(str(err))
        raise


def _shown(default: object) -> str:
    """A default as `--help` shows it: 'off' for an empty string."""
    if default == "":
        return "none"
    return str(default)


def _field_help(docstring: str) -> dict[str, str]:
    """Each field's description from a Google-style `Attributes:` section (`a, b: text`
    describes both), so that `serve --help` says what every flag does."""
    section = docstring.partition("Attributes:")[2]
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        entry = re.match(r"^ {8}([a-z][a-z0-9_]*(?:, [a-z][a-z0-9_]*)*): (.*)$", line)
        if entry:
            names = [n.strip() for n in entry.group(1).split(",")]
            for name in names:
                helps[name] = entry.group(2)
        elif line.startswith(" " * 12) and names:
            for name in names:
                helps[name] += " " + line.strip()
    return {name: text.replace("%", "%%") for name, text in helps.items()}


M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter for the size from which blocks get their own mmap."""
MMAP_THRESHOLD_BYTES = 128 * 1024


def _bound_malloc() -> None:
    """Large blocks (request bytes, decoded tensors) get their own mmap, given back to the
    system when freed.

    Left alone, glibc raises that threshold to the largest block freed so far (up to 32 MiB),
    and later large requests are carved from the RPC threads' arenas, which keep their pages:
    under large or hostile Predicts the server's memory ratchets up (+20-29% over 5,000 fuzz
    requests) and never comes back down. A fixed threshold also turns that adjustment off.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:  # the operator chose
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _stop_signals() -> Callable[[], None]:
    """Catches SIGTERM and SIGINT from now on; returns the call that blocks until one came.

    The signal's number reaches a pipe (`set_wakeup_fd`), so one that comes before the wait
    is not lost, and the handler takes no lock: setting a threading.Event from a handler can
    deadlock when the signal lands while the main thread holds that Event's lock.
    """
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write)
    stops = {signal.SIGTERM, signal.SIGINT}
    for sig in stops:
        signal.signal(sig, lambda *_: None)

    def wait() -> None:
        while os.read(read, 1)[0] not in stops:
            pass

    return wait


def worker(argv: list[str]) -> int:
    """`torchwire worker JOB_ID`: reads the job from its server, then runs this machine's
    processes of it (`app.remote_node.join`) until the job ends; 0 when they finished, 1 on
    an error."""
    import grpc

    from torchwire.client.cli import connect, connection_flags
    from torchwire.service.api import convert
    from torchwire.service.app.remote_node import join

    parser = argparse.ArgumentParser(
        prog="torchwire worker",
        parents=[connection_flags()],
        description="Join a distributed job (nnodes > 1) of a torchwire server from this machine.",
    )
    parser.add_argument("job_id")
    parser.add_argument("--store-dir", default="store", help="this machine's store (datasets)")
    parser.add_argument(
        "--data-roots", default="", help="this machine's data roots, comma-separated"
    )
    parser.add_argument("--allow-download", action="store_true")
    args = parser.parse_args(argv)
    try:
        with connect(args) as client:
            job = client.job(args.job_id).info()
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    roots = tuple(Path(p) for p in args.data_roots.split(",") if p)
    try:
        spec = convert.train_spec(job.request)
        join(job.id, spec, Path(args.store_dir), roots, args.allow_download)
    except Exception as err:  # the service's errors carry a message for a person
        print(f"error: {getattr(err, 'message', err)}", file=sys.stderr)
        return 1
    done = f"job {job.id}: this machine's processes finished"
    print(json.dumps({"job": job.id}, indent=2) if args.json else done)
    return 0


def frontend(argv: list[str]) -> int:
    """`python -m torchwire.service frontend FD RUNS_FD`: a frontend process, started by its
    server, which talks to it over the connection on file descriptor FD and sends the pieces
    of batched models to it over RUNS_FD."""
    from multiprocessing.connection import Connection

    from torchwire.service.frontend import run

    parser = argparse.ArgumentParser(prog="torchwire frontend")
    parser.add_argument("fd", type=int)
    parser.add_argument("runs_fd", type=int)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=logs.FORMATS)
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    _bound_malloc()
    code = run(Connection(args.fd), Connection(args.runs_fd))
    # RPC threads still winding down must not hold the exit: the server waits for it.
    logging.shutdown()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Serves until SIGTERM or SIGINT, then shuts down in order and returns 0; with `worker`
    or `frontend` first, runs that instead."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    if argv[:1] == ["frontend"]:
        return frontend(argv[1:])
    config, (log_level, log_format) = parse_config(argv)
    logs.configure(log_level, log_format)
    _bound_malloc()
    from torchwire.service.server import TorchwireServer

    try:
        server = TorchwireServer(config)
    except StartupError as err:
        print(f"torchwire serve: {err}", file=sys.stderr, flush=True)
        return 2
    stop = _stop_signals()
    try:
        server.start()
    except StartupError as err:
        server.stop(0)
        print(f"torchwire serve: {err}", file=sys.stderr, flush=True)
        return 2
    print(f"torchwire serving on {server.address}", flush=True)
    if server.metrics_port:
        host = config.metrics_address.rsplit(":", 1)[0]
        print(f"metrics on http://{host}:{server.metrics_port}/metrics", flush=True)
    if server.http_port:
        host = config.http_address.rsplit(":", 1)[0]
        print(f"v2 REST on http://{host}:{server.http_port}/v2", flush=True)
    stop()
    if not server.stop():
        # An RPC thread stuck past the bound would keep the interpreter from exiting:
        # everything that matters (jobs, checkpoints, the store) is closed, so leave now.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
