"""`torchwire serve` / `python -m torchwire.service`: configuration from flags and environment,
then serve until SIGTERM or SIGINT."""

import argparse
import dataclasses
import os
import signal
import sys
import threading

from torchwire.service import logs
from torchwire.service.config import ServerConfig

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
        prog="torchwire serve", description="Run the torchwire gRPC server."
    )
    for field in dataclasses.fields(ServerConfig):
        env = ENV_PREFIX + field.name.upper()
        default = os.environ.get(env, field.default)
        kind = _flag if field.type is bool else field.type if callable(field.type) else str
        flags = [f"--{field.name.replace('_', '-')}", *ALIASES.get(field.name, ())]
        # argparse converts string defaults (the environment's) with `type`, reporting errors.
        parser.add_argument(
            *flags, type=kind, default=default, help=f"(env {env}; default {field.default})"
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


def main(argv: list[str] | None = None) -> int:
    """Serves until SIGTERM or SIGINT, then shuts down in order and returns 0."""
    config, (log_level, log_format) = parse_config(sys.argv[1:] if argv is None else argv)
    logs.configure(log_level, log_format)
    from torchwire.service.server import TorchwireServer

    server = TorchwireServer(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"torchwire serving on {server.address}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
