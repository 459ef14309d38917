"""One batcher per model for the server and all its frontend processes.

With `--frontends N`, every process parses, checks and answers the Predicts that reach it, but
a batched model that is slow enough for merging to pay (a one-row run of at least
`--shared-run-ms` on the CPU; every batched model on a GPU, `ModelService.runs_for_frontends`)
runs only in the server: the pieces of requests that reached any process merge into the same
runs, and the model is loaded once (one copy of its weights, one CUDA context). Other models
load and run in whichever process received the request.

Each frontend has a socket pair of its own to the server for this. Both ways, a frame is a
pickled header followed by the raw bytes of one tensor:

- `OPEN` (frontend to server): load a model version in a runtime, or find it loaded; the
  answer, `OPENED`, carries its placement (or none: load and run it yourself), or `FAILED` the
  error. The frontend asks once per version and runtime, and again after the server told it
  to forget them.
- `RUN`: one piece of a request (at most the model's max_batch_size rows), queued on the
  server's batcher as it arrives, whatever the batcher is doing; `RESULT` carries the piece's
  outputs and the size and timing of the run that served it, or `FAILED` the run's error.
"""

import contextlib
import itertools
import logging
import pickle
import queue
import socket
import struct
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from torchwire.service import errors
from torchwire.service.core.batching import BatchingConfig, Pending, RunResult
from torchwire.service.errors import TorchwireError, Unavailable

if TYPE_CHECKING:
    from torchwire.service.app.serving import ModelService

log = logging.getLogger(__name__)

OPEN, OPENED, RUN, RESULT, FAILED = range(5)
_HEADER_SIZE = struct.Struct("<I")
OPEN_TIMEOUT_S = 600.0
"""How long a frontend waits for the server to load a model (a large model on a slow disk)."""


class _Channel:
    """One end of a socket pair carrying frames; sends from any thread, one at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._sending = threading.Lock()

    def send(self, header: tuple[Any, ...], tensor: np.ndarray | None = None) -> None:
        head = pickle.dumps(header, pickle.HIGHEST_PROTOCOL)
        parts: list[bytes | memoryview] = [_HEADER_SIZE.pack(len(head)), head]
        if tensor is not None:
            parts.append(np.ascontiguousarray(tensor).data)
        frame = b"".join(parts)
        with self._sending:
            self.conn.send_bytes(frame)

    def receive(self) -> tuple[tuple[Any, ...], memoryview]:
        """The next frame's header and the bytes after it. Raises EOFError or OSError when
        the other end is gone."""
        frame = self.conn.recv_bytes()
        (size,) = _HEADER_SIZE.unpack_from(frame)
        end = _HEADER_SIZE.size + size
        return pickle.loads(frame[_HEADER_SIZE.size : end]), memoryview(frame)[end:]

    def shutdown(self) -> None:
        """Ends the socket both ways: a thread blocked reading it sees its end, and sends
        fail, but the descriptor stays open (no other file can take its number yet)."""
        with (
            contextlib.suppress(OSError),
            socket.fromfd(self.conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock,
        ):
            sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Closes the descriptor, once no send is under way (after `shutdown` and after the
        reader has returned)."""
        self.shutdown()
        with self._sending:
            self.conn.close()


def _tensor(body: memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(body, np.dtype(dtype)).reshape(shape)


def _failure(request: int, err: BaseException) -> tuple[Any, ...]:
    """A FAILED frame's header: the nearest class of `service.errors` the error is an
    instance of (a subclass defined elsewhere travels as its base), and its message."""
    if isinstance(err, TorchwireError):
        kind = next(c.__name__ for c in type(err).__mro__ if getattr(errors, c.__name__, 0) is c)
        return (FAILED, request, kind, err.message)
    return (FAILED, request, "", f"{type(err).__name__}: {err}")


def _error(kind: str, message: str) -> Exception:
    """The exception a FAILED frame stands for: the same TorchwireError class, or an
    unexpected error (INTERNAL)."""
    cls = getattr(errors, kind, None) if kind else None
    if isinstance(cls, type) and issubclass(cls, TorchwireError):
        return cls(message)
    return RuntimeError(f"the server's run failed: {message}")


GONE = "the server is gone: this frontend is stopping"


# -------------------------------------------------------------------- the server's end


class RunnerLink:
    """The server's end of one frontend's socket pair: opens the runtimes the frontend asks
    for and queues the pieces it sends on their batchers, on a reader thread of its own; a
    writer thread sends each piece's outputs back as soon as its run is over (the batcher's
    thread only hands them over: a frontend slow to read never holds up a shared model).

    Args:
        conn: the server's end of the pair.
        models: the server's models.
    """

    def __init__(self, conn: Connection, models: "ModelService") -> None:
        self._channel = _Channel(conn)
        self._models = models
        self._opened: dict[int, tuple[str, int, str]] = {}
        # Bounded by the frontend's pieces in flight: each waits for its answer.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._serve, name="runner-link", daemon=True)
        self._writer = threading.Thread(target=self._write, name="runner-reply", daemon=True)
        self._reader.start()
        self._writer.start()

    def close(self) -> None:
        """Ends the link: the reader sees the socket's end, the writer its last frame."""
        self._channel.shutdown()
        self._reader.join(5.0)
        self._outbox.put(None)
        self._writer.join(5.0)
        self._channel.close()

    def _serve(self) -> None:
        try:
            while True:
                header, body = self._channel.receive()
                kind, request = header[0], header[1]
                if kind == OPEN:
                    # Loading may take seconds: pieces of models already open keep flowing.
                    threading.Thread(
                        target=self._open, args=header[1:], name="runner-open", daemon=True
                    ).start()
                else:
                    handle, dtype, shape = header[2:]
                    self._queue_piece(request, handle, dtype, shape, body)
        except (EOFError, OSError):  # the frontend is gone, or the link was closed
            pass
        except Exception:
            log.exception("a frontend's link failed; it stops")
        finally:
            self._channel.shutdown()  # the frontend sees the end and fails what waits

    def _queue_piece(
        self, request: int, handle: int, dtype: str, shape: tuple[int, ...], body: memoryview
    ) -> None:
        """Queues a RUN's rows on the model's batcher (run here only when its batching was
        turned off meanwhile: the frontend has been told to load it itself)."""
        try:
            served = self._models.served(*self._opened[handle])
            rows = _tensor(body, dtype, shape)
            served.enqueue(rows, lambda piece: self._answer(request, piece))
        except Exception as err:
            self._fail(request, err)

    def _open(self, request: int, handle: int, name: str, version: int, runtime: str) -> None:
        try:
            served = self._models.served(name, version, runtime)
        except Exception as err:
            self._fail(request, err)
            return
        shared = self._models.runs_for_frontends(served)
        if shared:
            # Kept for the link's life, older handles of a reopened model too: a request that
            # took the model before the frontend forgot it may still send pieces under them
            # (one small entry per open; opens follow exports and configuration changes).
            self._opened[handle] = (name, served.record.version, served.runtime.name)
        self._outbox.put(((OPENED, request, served.runtime.placement if shared else None), None))

    def _answer(self, request: int, piece: Pending[RunResult]) -> None:
        """Hands a piece's outcome to the writer (on the batcher's thread: must not block)."""
        try:
            ran = piece.result(0)
        except Exception as err:
            self._fail(request, err)
            return
        header = (RESULT, request, ran.rows, ran.started, ran.seconds)
        self._outbox.put(((*header, ran.outputs.dtype.str, ran.outputs.shape), ran.outputs))

    def _fail(self, request: int, err: BaseException) -> None:
        if not isinstance(err, TorchwireError):
            log.error("a frontend's piece failed here", exc_info=err)
        self._outbox.put((_failure(request, err), None))

    def _write(self) -> None:
        while (frame := self._outbox.get()) is not None:
            header, tensor = frame
            try:
                self._channel.send(header, tensor)
            except OSError:  # the frontend is gone: nobody waits for the answer
                continue
            except Exception as err:  # the answer could not be sent: say so instead
                with contextlib.suppress(Exception):
                    self._channel.send(_failure(header[1], err))


# ------------------------------------------------------------------ a frontend's end


class Runner:
    """A frontend's end of its socket pair to the server: frames go out from any thread, and
    a reader thread hands each answer to the one waiting for it."""

    def __init__(self, conn: Connection) -> None:
        self._channel = _Channel(conn)
        self._waiting: dict[int, Pending[Any]] = {}
        self._requests = itertools.count()
        self._handles = itertools.count()
        self._gone = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="runner", daemon=True)
        self._thread.start()

    def open(
        self, name: str, version: int, runtime: str, config: BatchingConfig
    ) -> "RemoteRuntime | None":
        """The server's batched runtime of `name` v`version`, loaded there if it was not;
        None when the server answers that this process should load and batch it itself (a
        model that runs faster than the trip to the server).

        Raises:
            TorchwireError: what loading it raised in the server (NotFound,
                FailedPrecondition...); Unavailable when the server is gone or too slow.
        """
        handle = next(self._handles)
        opening: Pending[str | None] = self._send((OPEN, handle, name, version, runtime))
        try:
            placement = opening.result(OPEN_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(
                f"the server did not load model {name!r} v{version} within {OPEN_TIMEOUT_S:.0f} s"
            ) from None
        if placement is None:
            return None
        return RemoteRuntime(runtime, placement, RemoteBatcher(self, handle, config))

    def run(self, handle: int, rows: np.ndarray) -> Pending[RunResult]:
        """Sends one piece to the server's batcher; its `Pending` resolves to the piece's
        share of the run that served it."""
        return self._send((RUN, handle, rows.dtype.str, rows.shape), rows)

    def _send(self, header: tuple[Any, ...], tensor: np.ndarray | None = None) -> Pending[Any]:
        request = next(self._requests)
        pending: Pending[Any] = Pending()
        with self._lock:
            if self._gone:
                raise Unavailable(GONE)
            self._waiting[request] = pending
        try:
            self._channel.send((header[0], request, *header[1:]), tensor)
        except (OSError, ValueError):
            with self._lock:
                self._waiting.pop(request, None)
            raise Unavailable(GONE) from None
        return pending

    def _read(self) -> None:
        try:
            while True:
                header, body = self._channel.receive()
                kind, request = header[0], header[1]
                with self._lock:
                    pending = self._waiting.pop(request, None)
                if pending is None:
                    continue
                if kind == RESULT:
                    rows, started, seconds, dtype, shape = header[2:]
                    outputs = _tensor(body, dtype, shape)
                    pending.set_result(RunResult(outputs, rows, started, seconds))
                elif kind == OPENED:
                    pending.set_result(header[2])
                else:
                    pending.set_exception(_error(*header[2:]))
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("the link to the server failed")
        finally:
            self._channel.shutdown()
            with self._lock:
                self._gone = True
                waiting, self._waiting = self._waiting, {}
            for pending in waiting.values():
                pending.set_exception(Unavailable(GONE))

    def close(self) -> None:
        """Ends the link; pieces still waiting fail with UNAVAILABLE."""
        self._channel.shutdown()
        self._thread.join(5.0)
        self._channel.close()


class RemoteBatcher:
    """Stands in a frontend for the server's batcher of one model: `submit` splits a request
    into pieces of at most max_batch_size rows, as the batcher itself would, and sends each
    to it; they merge there with the pieces of every other process."""

    def __init__(self, runner: Runner, handle: int, config: BatchingConfig) -> None:
        self._runner = runner
        self._handle = handle
        self.config = config

    def submit(self, batch: np.ndarray) -> list[Pending[RunResult]]:
        size = self.config.max_batch_size
        return [
            self._runner.run(self._handle, batch[start : start + size])
            for start in range(0, len(batch), size)
        ]

    def queued(self) -> int:
        """Pieces queued here: none (they queue in the server, which counts them)."""
        return 0

    def close(self) -> None:
        """Nothing to stop: the pieces sent are the server's to finish."""


class RemoteRuntime:
    """A model version whose runs happen in the server, through its batcher: what a
    frontend's cache holds for a batched model instead of a runtime of its own."""

    def __init__(self, name: str, placement: str, batcher: RemoteBatcher) -> None:
        self.name = name
        self.placement = placement
        self.batcher = batcher

    def run(self, batch: np.ndarray) -> np.ndarray:
        pieces = [piece.result().outputs for piece in self.batcher.submit(batch)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def size_bytes(self) -> int:
        """Nothing loaded here."""
        return 0

    def close(self) -> None:
        """Nothing loaded here."""
