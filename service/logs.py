"""Structured logs: human-readable or JSON lines, each carrying the request id and the job id
of the work it belongs to."""

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Iterator

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="")
FORMATS = ("text", "json")


class _Context(logging.Filter):
    """Stamps every record with the current request and job ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.job_id = job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, job_id."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", ""),
            "job_id": getattr(record, "job_id", ""),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str, fmt: str) -> None:
    """Sets up the root logger for the server process."""
    handler = logging.StreamHandler()
    handler.addFilter(_Context())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [request %(request_id)s job %(job_id)s] %(message)s"
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


def current() -> tuple[str, str]:
    """The level and format `configure` set up (for child processes to log alike)."""
    root = logging.getLogger()
    json_lines = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.getEffectiveLevel()), "json" if json_lines else "text"


@contextlib.contextmanager
def bound(var: contextvars.ContextVar[str], value: str) -> Iterator[None]:
    """Log records made inside carry `value` in `var` (a request or a job id)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
