"""Dynamic batching: concurrent requests to one runtime are merged into runs of up to
`max_batch_size` rows, then split back in order."""

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import numpy as np

_STOP = object()


@dataclass(frozen=True)
class BatchingConfig:
    """How one model's requests are batched.

    Attributes:
        enabled: False runs every request on its own, in the caller's thread.
        max_batch_size: rows per run; larger requests are split into pieces this big.
        max_delay_ms: how long the first request of a run waits for others. 0 merges only
            what is already queued (no added latency when idle; natural batching under load).
    """

    enabled: bool = True
    max_batch_size: int = 64
    max_delay_ms: float = 0.0
    bucket_sizes: tuple[int, ...] | None = None
    """Sizes runs are padded up to (`core.buckets`); empty: no padding; None: the server's
    `--bucket-sizes`."""


T = TypeVar("T")


class Pending(Generic[T]):
    """A result set once by one thread and read by the one thread waiting for it (a queued
    piece's `RunResult`): a lock taken at creation and released when the result is in, the
    cheapest wait CPython has (a `concurrent.futures.Future` adds a condition and a second
    lock)."""

    __slots__ = ("_done", "_value", "_error", "_on_done")

    def __init__(self, on_done: Callable[["Pending[T]"], None] | None = None) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._on_done = on_done
        """Called with this piece once its result or error is in, on the thread that set
        it: for a waiter that is not a thread (a frontend's piece, answered over a
        socket)."""

    def set_result(self, value: T) -> None:
        self._value = value
        self._finish()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._finish()

    def _finish(self) -> None:
        self._done.release()
        if self._on_done is not None:
            self._on_done(self)

    def result(self, timeout: float | None = None) -> T:
        """The run's result, waiting up to `timeout` seconds (None: as long as it takes).

        Raises:
            TimeoutError: not done within `timeout`.
        """
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError
        self._done.release()  # done for good: asking again answers at once
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@dataclass
class _Piece:
    rows: np.ndarray
    future: Pending["RunResult"]


class RunResult(NamedTuple):
    """A piece's share of the model run that served it."""

    outputs: np.ndarray
    """The outputs of the piece's rows."""
    rows: int
    """The size of the whole run."""
    started: float
    """When the run began (`time.perf_counter()`)."""
    seconds: float
    """How long the run took."""


class Ran:
    """A piece already run in the caller's thread: its result, read like a Future's, without
    the Future's lock and condition."""

    __slots__ = ("value",)

    def __init__(self, value: RunResult) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> RunResult:
        return self.value


Outcome = Pending[RunResult] | Ran
"""What `submit` gives back for each piece: `.result(timeout)` is its `RunResult`."""

RunObserver = Callable[[int, float], None]
"""Told the size and the duration in seconds of every successful model run."""


def run_now(run: Callable[[], RunResult], on_done: Callable[[Pending[RunResult]], None]) -> None:
    """Runs a piece in the caller's thread and calls `on_done` with its outcome, an error
    included, as a batcher's run would."""
    piece: Pending[RunResult] = Pending(on_done)
    try:
        ran = run()
    except BaseException as err:
        piece.set_exception(err)
        return
    piece.set_result(ran)


def timed_run(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> RunResult:
    """Runs `batch` and times the run."""
    started = time.perf_counter()
    outputs = run(batch)
    return RunResult(outputs, len(batch), started, time.perf_counter() - started)


class Batcher:
    """Merges pieces submitted from many threads into runs of `run`, on one thread of its own.

    Each piece's future resolves to the `RunResult` of the run it was part of, holding the
    outputs of its own rows.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        config: BatchingConfig,
        name: str,
        observe: RunObserver = lambda rows, seconds: None,
    ) -> None:
        self._run = run
        self._observe = observe
        self.config = config
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Held during every model run, so that runs never overlap: what arrives during one
        # queues up and is merged into the next.
        self._running = threading.Lock()
        # Guards `_closed` against the queue: no piece is queued after the stop sentinel.
        self._accepting = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, batch: np.ndarray) -> list[Outcome]:
        """Queues `batch`, split into pieces of at most `max_batch_size` rows.

        Without a delay to wait for, a piece that finds the runtime idle and nothing queued
        runs at once in the caller's thread: merging would gain nothing, and the hand-off
        to the batcher thread costs more than a small model's run. Once the batcher is closed
        (a caller may still hold it while a reconfiguration, an export or an eviction
        replaces it), the caller runs its pieces itself: no thread is left to run them. A run
        in the caller's thread raises its error there.
        """
        if (
            self.config.max_delay_ms == 0
            and len(batch) <= self.config.max_batch_size
            and self._queue.empty()
            and self._running.acquire(blocking=False)
        ):
            try:
                return [self._inline(batch)]
            finally:
                self._running.release()
        size = self.config.max_batch_size
        pieces = [batch[start : start + size] for start in range(0, len(batch), size)]
        with self._accepting:
            if not self._closed:
                queued = [_Piece(rows, Pending()) for rows in pieces]
                for piece in queued:
                    self._queue.put(piece)
                return [piece.future for piece in queued]
        with self._running:
            return [self._inline(rows) for rows in pieces]

    def enqueue(self, rows: np.ndarray, on_done: Callable[[Pending[RunResult]], None]) -> None:
        """Queues `rows` as one piece for the next run, whatever its size and whether the
        runtime is idle, and calls `on_done` with its `Pending` once the run is over (on the
        batcher's thread): for a caller that must not wait, such as the reader of a frontend
        process's pieces, which keeps reading while they run. Once the batcher is closed,
        the piece runs at once in the caller's thread."""
        with self._accepting:
            if not self._closed:
                self._queue.put(_Piece(rows, Pending(on_done)))
                return
        with self._running:
            run_now(lambda: self._inline(rows).value, on_done)

    def _inline(self, batch: np.ndarray) -> Ran:
        """Runs `batch` in the caller's thread (which holds `_running`)."""
        ran = timed_run(self._run, batch)
        self._observe(ran.rows, ran.seconds)
        return Ran(ran)

    def queued(self) -> int:
        """Pieces waiting for a run."""
        return self._queue.qsize()

    def close(self) -> None:
        """Finishes the queued pieces, then stops the thread; later pieces run in their
        callers' threads."""
        with self._accepting:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        max_rows = self.config.max_batch_size
        max_delay = self.config.max_delay_ms / 1000.0
        held = None  # a piece that did not fit into the previous run
        while True:
            first = held if held is not None else self._queue.get()
            held = None
            if first is _STOP:
                return
            # Wait for the runtime first: whatever queues while it is busy joins this run.
            with self._running:
                run, rows = [first], len(first.rows)
                deadline = time.monotonic() + max_delay
                while rows < max_rows:
                    try:
                        timeout = deadline - time.monotonic()
                        piece = (
                            self._queue.get(timeout=timeout)
                            if timeout > 0
                            else self._queue.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if piece is _STOP or rows + len(piece.rows) > max_rows:
                        held = piece
                        break
                    run.append(piece)
                    rows += len(piece.rows)
                self._execute(run, rows)

    def _execute(self, run: list[_Piece], rows: int) -> None:
        batch = run[0].rows if len(run) == 1 else np.concatenate([p.rows for p in run])
        try:
            ran = timed_run(self._run, batch)
        except BaseException as err:  # every waiter must hear about it
            for piece in run:
                piece.future.set_exception(err)
            return
        self._observe(rows, ran.seconds)
        offset = 0
        for piece in run:
            piece.future.set_result(
                ran._replace(outputs=ran.outputs[offset : offset + len(piece.rows)])
            )
            offset += len(piece.rows)
