"""A child process for what the server must not run itself: imported files are checked, and
imported TorchScript is served, in one. A crash, a hang or a hostile file then costs the
child, never the server.

The child answers in frames of JSON and raw bytes: the server never unpickles what a child
sends. (The server's requests to the child are pickled: the child trusts its parent.)
"""

import json
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from torchwire.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    TorchwireError,
)

Handler = Callable[[Any, bytes], tuple[dict[str, Any], bytes]]
"""What a child does with one request and its payload: an answer (JSON-ready) and its bytes."""
Factory = Callable[..., tuple[dict[str, Any], Handler | None]]
"""Runs first in the child: what it found (the ready frame) and the handler of later requests
(None when the child has nothing more to do)."""

_ERRORS: dict[str, type[TorchwireError]] = {
    cls.__name__: cls for cls in (InvalidArgument, FailedPrecondition, ResourceExhausted)
}


def _send(conn: Connection, header: dict[str, Any], data: bytes = b"") -> None:
    conn.send_bytes(json.dumps(header).encode())
    conn.send_bytes(data)


def _send_error(conn: Connection, err: BaseException) -> None:
    if isinstance(err, TorchwireError) and type(err).__name__ in _ERRORS:
        _send(conn, {"error": err.message, "kind": type(err).__name__})
    else:
        _send(conn, {"error": f"{type(err).__name__}: {err}", "kind": "FailedPrecondition"})


def _serve(conn: Connection, factory: Factory, args: tuple[Any, ...]) -> None:
    """The child: run the factory, send its ready frame, then answer until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when its children stop
    try:
        ready, handler = factory(*args)
    except BaseException as err:  # whatever the file makes the loader raise
        _send_error(conn, err)
        return
    _send(conn, ready)
    while handler is not None:
        try:
            request = conn.recv()
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            answer, data = handler(request, payload)
        except Exception as err:
            _send_error(conn, err)
            continue
        _send(conn, answer, data)


class Child:
    """A child process running `factory(*args)`, then answering `call`s one at a time.

    Args:
        name: what errors and the process list call it.
        factory: a module-level function (it travels by reference) run first in the child.
        args: its arguments, picklable.
        timeout: seconds the factory may take.

    Raises:
        InvalidArgument, FailedPrecondition, ResourceExhausted: what the factory raised.
        FailedPrecondition: the child died or did not answer in time (it is then killed).
    """

    def __init__(self, name: str, factory: Factory, args: tuple[Any, ...], timeout: float) -> None:
        self.name = name
        # Forked from the forkserver, which is single-threaded and has torch imported already
        # (see app.jobs): fast, and safe where forking this threaded server is not.
        context = multiprocessing.get_context("forkserver")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(theirs, factory, args), name=name, daemon=True
        )
        self._lock = threading.Lock()
        self._process.start()
        theirs.close()
        try:
            self.ready, _ = self._receive(timeout)
        except BaseException:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def call(self, request: Any, payload: Any, timeout: float) -> tuple[dict[str, Any], bytes]:
        """Sends a request with its payload (any buffer) and waits up to `timeout` seconds."""
        with self._lock:
            try:
                self._conn.send(request)
                self._conn.send_bytes(payload)
            except OSError as err:
                raise self._died() from err
            return self._receive(timeout)

    def _receive(self, timeout: float) -> tuple[dict[str, Any], bytes]:
        if not self._conn.poll(timeout):
            self.close()
            raise FailedPrecondition(f"{self.name} did not answer within {timeout:g} s; stopped")
        try:
            header = json.loads(self._conn.recv_bytes())
            data = self._conn.recv_bytes()
        except (EOFError, OSError) as err:
            raise self._died() from err
        if "error" in header:
            raise _ERRORS.get(header["kind"], FailedPrecondition)(header["error"])
        return header, data

    def _died(self) -> FailedPrecondition:
        self._process.join(5)
        return FailedPrecondition(f"{self.name} exited with code {self._process.exitcode}")

    def close(self) -> None:
        """Stops the child: it ends when its pipe closes, or is killed after 2 s."""
        self._conn.close()
        self._process.join(2)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
