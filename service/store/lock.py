"""One server per store: an exclusive lock on `<store>/server.lock`, which names its holder.

The lock is `flock(2)` on an open file, so the kernel releases it when the holder exits in
any way, kill -9 included: a server started after a crash takes the store over at once, and
one started beside a live server is refused before it touches a job.
"""

import fcntl
import json
import os
import time
from pathlib import Path

from torchwire.service.errors import StartupError

LOCK_FILE = "server.lock"


class StoreLock:
    """Holds the store's lock from construction until `release`.

    Args:
        root: the store directory (created if missing).
        address: the holder's gRPC address, written into the lock file for whoever is refused.

    Raises:
        StartupError: another live process holds the lock.
    """

    def __init__(self, root: Path, address: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / LOCK_FILE
        # O_CLOEXEC (Python's default): no child process inherits the lock.
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            self.release()
            raise StartupError(
                f"store {str(root)!r} is in use by another torchwire server ({holder}); "
                "stop it first, or give this one another --store-dir"
            ) from None
        record = {"pid": os.getpid(), "address": address, "since": time.time()}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def _holder(self) -> str:
        """Who holds the lock, as its file says."""
        try:
            record = json.loads(self.path.read_text() or "{}")
            return f"pid {record['pid']}, serving on {record['address']}"
        except (OSError, ValueError, KeyError):
            return "its pid is not recorded yet"

    def release(self) -> None:
        """Releases the lock (idempotent). The file stays: removing it would let a process
        that opened it before the removal lock a file that no one else sees."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
