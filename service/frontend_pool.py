"""The server's side of its frontend processes (see `torchwire.service.frontend`): it starts
them, tells them what went stale, collects their metrics, replaces one that dies, and stops
them."""

import logging
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from torchwire.service.app.runner import RunnerLink
from torchwire.service.app.statistics import Key, VersionStatistics
from torchwire.service.errors import StartupError
from torchwire.service.frontend import FrontendSetup

if TYPE_CHECKING:
    from torchwire.service.app.serving import ModelService

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
"""How long a frontend may take to import, open the store and bind."""
REPLY_TIMEOUT_S = 30.0
"""How long a frontend may take to answer (a `forget` waits for its batchers to drain)."""
SUPERVISE_INTERVAL_S = 0.5
MAX_REPLACEMENTS = 5
"""Frontends replaced within REPLACEMENT_WINDOW_S before the server stops replacing them
(a frontend that dies at once would otherwise be restarted forever)."""
REPLACEMENT_WINDOW_S = 60.0


@dataclass
class _Frontend:
    process: subprocess.Popen
    conn: Connection
    """The control connection: the server's requests, the frontend's replies."""
    runs: RunnerLink
    """The frontend's pieces of batched models, run here (`app.runner`)."""

    def close(self) -> None:
        self.conn.close()
        self.runs.close()


class FrontendPool:
    """`count` frontend processes serving on the server's port.

    Args:
        setup: what each frontend is sent when it starts.
        count: how many to keep running.
        log_level, log_format: the server's logging, which frontends use too.
        models: the server's models, which run the pieces of batched models that frontends
            send to their batchers.
    """

    def __init__(
        self,
        setup: FrontendSetup,
        count: int,
        log_level: str,
        log_format: str,
        models: "ModelService",
    ) -> None:
        self._setup = setup
        self._count = count
        self._log = (log_level, log_format)
        self._models = models
        self._frontends: list[_Frontend] = []
        # Held while the list changes and while a request goes round all of them: a frontend
        # is either started before a change is announced, or told about it.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._replaced: deque[float] = deque(maxlen=MAX_REPLACEMENTS)
        self._supervisor = threading.Thread(target=self._supervise, name="frontends", daemon=True)

    def start(self) -> None:
        """Starts every frontend and waits until each serves.

        Raises:
            StartupError: a frontend could not start (the others are stopped).
        """
        with self._lock:
            try:
                for _ in range(self._count):
                    self._frontends.append(self._spawn())
            except StartupError:
                self._terminate(self._frontends)
                raise
        self._supervisor.start()

    def pids(self) -> list[int]:
        """The running frontends' process ids."""
        with self._lock:
            return [f.process.pid for f in self._frontends]

    def _spawn(self) -> _Frontend:
        ours, theirs = socket.socketpair()
        our_runs, their_runs = socket.socketpair()
        level, fmt = self._log
        fds = (theirs.fileno(), their_runs.fileno())
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "torchwire.service", "frontend", *map(str, fds)]
            + ["--log-level", level, "--log-format", fmt],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        their_runs.close()
        conn = Connection(ours.detach())
        frontend = _Frontend(process, conn, RunnerLink(Connection(our_runs.detach()), self._models))
        try:
            conn.send(self._setup)
            if not conn.poll(START_TIMEOUT_S):
                raise StartupError(f"a frontend did not start within {START_TIMEOUT_S:.0f} s")
            reply = conn.recv()
        except (OSError, EOFError) as err:
            self._terminate([frontend])
            raise StartupError(f"a frontend exited while starting ({err!r})") from None
        except StartupError:
            self._terminate([frontend])
            raise
        if reply[0] != "ready":
            self._terminate([frontend])
            raise StartupError(f"a frontend could not start: {reply[1]}")
        log.info("frontend process %d serving", process.pid)
        return frontend

    def _supervise(self) -> None:
        """Replaces frontends that exit (a crash, an OOM kill, a stray signal)."""
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                for index, frontend in enumerate(self._frontends):
                    code = frontend.process.poll()
                    if code is None:
                        continue
                    frontend.close()
                    now = time.monotonic()
                    if (
                        len(self._replaced) == MAX_REPLACEMENTS
                        and now - self._replaced[0] < REPLACEMENT_WINDOW_S
                    ):
                        log.error(
                            "frontend process %d exited (code %s); %d were replaced within "
                            "%.0f s, so no more are: the server serves on",
                            frontend.process.pid,
                            code,
                            MAX_REPLACEMENTS,
                            REPLACEMENT_WINDOW_S,
                        )
                        self._frontends.pop(index)
                        break
                    log.warning(
                        "frontend process %d exited (code %s); starting another",
                        frontend.process.pid,
                        code,
                    )
                    self._replaced.append(now)
                    try:
                        self._frontends[index] = self._spawn()
                    except StartupError as err:
                        log.error("could not replace a frontend: %s", err.message)
                        self._frontends.pop(index)
                    break

    def _ask(self, message: tuple[Any, ...], timeout: float = REPLY_TIMEOUT_S) -> list[Any]:
        """Sends `message` to every frontend and gathers the replies of those that answer;
        one that died meanwhile is skipped (its replacement starts with nothing stale)."""
        with self._lock:
            frontends = list(self._frontends)
            asked = []
            for frontend in frontends:
                try:
                    frontend.conn.send(message)
                    asked.append(frontend)
                except OSError:
                    continue
            replies = []
            for frontend in asked:
                try:
                    if frontend.conn.poll(timeout):
                        replies.append(frontend.conn.recv())
                    else:
                        log.error("frontend process %d did not answer", frontend.process.pid)
                        frontend.process.kill()  # the supervisor replaces it
                except (OSError, EOFError):
                    continue
            return replies

    def forget(self, name: str, version: int | None) -> None:
        """Tells every frontend that a model changed: with a version (0: all), its loaded
        runtimes are stale; in any case its latest version may be another. Returns once
        each has dropped them."""
        self._ask(("forget", name, version))

    def metrics(self) -> list[bytes]:
        """Every frontend's metrics, in Prometheus' text format."""
        return [reply[1] for reply in self._ask(("metrics",))]

    def statistics(self) -> list[dict[Key, VersionStatistics]]:
        """Every frontend's inference statistics (for the v2 ModelStatistics)."""
        return [reply[1] for reply in self._ask(("statistics",))]

    def stop(self, grace: float) -> None:
        """Stops every frontend (each drains its calls within `grace`), then ends them."""
        self._stopping.set()
        self._ask(("stop", grace), grace + REPLY_TIMEOUT_S)
        with self._lock:
            self._terminate(self._frontends, grace + 5.0)
            self._frontends = []

    @staticmethod
    def _terminate(frontends: list[_Frontend], wait: float = 5.0) -> None:
        """Waits up to `wait` seconds for the processes to exit, kills the rest."""
        deadline = time.monotonic() + wait
        for frontend in frontends:
            try:
                frontend.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                frontend.process.kill()
                frontend.process.wait()
            frontend.close()
