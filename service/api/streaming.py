"""Pipelined request streams: requests are read and started as they arrive, on a reader
thread, and answered in order as soon as each is done, with a bounded number in flight.

A client that sends one request and waits for its answer gets it at once; a client that
sends many keeps the batcher fed with up to `window` of them.
"""

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

Request = TypeVar("Request")
Started = TypeVar("Started")
Response = TypeVar("Response")

STREAM_WINDOW = 8
"""Requests of one stream in flight at once: enough to keep a batcher busy, few enough that
memory stays bounded while a client streams on."""
_END = object()
_PUT_POLL_S = 0.5
"""How often a reader blocked on a full window checks that the answers are still wanted."""


class _Failed:
    """Ends the stream with an error, in its place."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def pipelined(
    requests: Iterator[Request],
    start: Callable[[int, Request], Started],
    finish: Callable[[Started], Response],
    window: int,
) -> Iterator[Response]:
    """Answers `requests` in order: `start(index, request)` as each arrives (on a reader
    thread), `finish(started)` in request order, with at most `window` started and not yet
    finished. An error from `start` or from reading the stream ends the stream with that error
    once the answers before it are out.
    """
    started: queue.Queue = queue.Queue(maxsize=window)
    gone = threading.Event()  # the answers are no longer wanted

    def put(item: object) -> bool:
        while not gone.is_set():
            try:
                started.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for index, request in enumerate(requests):
                if not put(start(index, request)):
                    return
        except BaseException as err:  # the consumer raises it in its place
            put(_Failed(err))
            return
        put(_END)

    # The reader logs with the call's request id.
    reader = threading.Thread(
        target=contextvars.copy_context().run, args=(read,), name="stream-reader", daemon=True
    )
    reader.start()
    try:
        while True:
            item = started.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield finish(item)
    finally:
        gone.set()
