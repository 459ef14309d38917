"""System shared memory (the Open Inference Protocol's extension): POSIX shared-memory
objects that a client on the same host registers as named regions, so that inference inputs
and outputs travel through memory instead of the wire.

A region maps its object once, at registration. A request takes the region's mapping for as
long as it reads or writes it; unregistering removes the name at once, and the mapping goes
away when the last request holding it lets go (reference counting), so unregistering a
region in use neither fails the request nor frees memory under it.
"""

import mmap
import os
import re
import stat
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchwire.service.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

SHM_ROOT = Path("/dev/shm")
"""Where Linux keeps POSIX shared-memory objects (what shm_open opens)."""
_KEY = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
MAX_REGIONS = 1024
"""Regions registered at once: each holds a mapping and an open descriptor."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class RegionStatus:
    """A registered region, as the protocol reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """A mapped region, and the object's descriptor, kept to check its size at each use:
    reading a mapping past the end of a truncated object would kill the process (SIGBUS)."""

    def __init__(self, status: RegionStatus, memory: mmap.mmap, start: int, fd: int) -> None:
        self.status = status
        self.memory = memory
        self.start = start
        self.fd = fd
        weakref.finalize(self, os.close, fd)

    def check_size(self, field: str) -> None:
        """Refuses a region whose object was truncated below it since registration."""
        status = self.status
        size = os.fstat(self.fd).st_size
        if status.offset + status.byte_size > size:
            raise FailedPrecondition(
                f"{field}={status.name!r}: the shared-memory object {status.key!r} shrank to "
                f"{size} bytes, below the region's end ({status.offset + status.byte_size}); "
                "register it again"
            )


@dataclass(frozen=True)
class Window:
    """Part of a region that one tensor of one request reads or writes."""

    region: str
    offset: int
    byte_size: int
    field: str
    """The request field that named it (for errors): `inputs[0].parameters`, ..."""


class SharedMemoryRegistry:
    """The regions registered with this server, by name.

    Args:
        root: the folder of shared-memory objects (tests may point it elsewhere).
    """

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Maps `byte_size` bytes of the object `key` from `offset` as region `name`.

        Raises:
            InvalidArgument: a malformed name or key, an object that is missing, not a
                shared-memory object, or smaller than offset + byte_size.
            AlreadyExists: a region of that name is registered.
        """
        if not _NAME.fullmatch(name):
            raise InvalidArgument.field(
                "name", name, "must be 1-128 letters, digits, '.', '_', ':' or '-'"
            )
        if not _KEY.fullmatch(key):
            raise InvalidArgument.field(
                "key", key, "must be a shared-memory object's name, such as '/input0'"
            )
        if byte_size < 1:
            raise InvalidArgument.field("byte_size", byte_size, "must be >= 1")
        with self._lock:
            if len(self._regions) >= MAX_REGIONS:
                raise ResourceExhausted(
                    f"{MAX_REGIONS} shared-memory regions are registered; unregister some first"
                )
            if name in self._regions:
                raise AlreadyExists(
                    f"name={name!r}: a region of that name is registered; unregister it first"
                )
            memory, start, fd = self._map(key, offset, byte_size)
            status = RegionStatus(name, key, offset, byte_size)
            self._regions[name] = _Region(status, memory, start, fd)

    def _map(self, key: str, offset: int, byte_size: int) -> tuple[mmap.mmap, int, int]:
        """The region mapped (from the page that holds its start), where it starts in the
        mapping, and the object's open descriptor."""
        path = self._root / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise InvalidArgument.field(
                "key", key, f"cannot open the shared-memory object: {err.strerror}"
            ) from err
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument.field("key", key, "is not a shared-memory object")
            if offset + byte_size > info.st_size:
                raise InvalidArgument.field(
                    "byte_size",
                    byte_size,
                    f"offset {offset} + byte_size {byte_size} is past the end of {key!r} "
                    f"({info.st_size} bytes)",
                )
            page = offset - offset % mmap.ALLOCATIONGRANULARITY
            memory = mmap.mmap(fd, offset + byte_size - page, offset=page)
        except BaseException:
            os.close(fd)
            raise
        return memory, offset - page, fd

    def status(self, name: str = "") -> list[RegionStatus]:
        """One region (by name) or all of them.

        Raises:
            NotFound: no region of that name is registered.
        """
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values()]
            return [self._get(name, "name").status]

    def unregister(self, name: str = "") -> None:
        """Unregisters one region, or with no name, all of them. Requests using a region keep
        its mapping until they finish.

        Raises:
            NotFound: no region of that name is registered.
        """
        with self._lock:
            if not name:
                self._regions.clear()
                return
            self._get(name, "name")
            del self._regions[name]

    def _get(self, name: str, field: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"{field}={name!r}: no shared-memory region of that name is registered")
        return region

    def view(self, window: Window) -> np.ndarray:
        """The window's bytes, as a writable uint8 array over the mapping (which it keeps
        alive for as long as the array lives).

        Raises:
            NotFound: the region is not registered.
            InvalidArgument: the window does not fit in the region.
        """
        field = f"{window.field}.shared_memory_region"
        with self._lock:
            region = self._get(window.region, field)
        region.check_size(field)
        status = region.status
        if window.offset < 0 or window.byte_size < 0:
            raise InvalidArgument.field(
                f"{window.field}.shared_memory_offset", window.offset, "must be >= 0"
            )
        if window.offset + window.byte_size > status.byte_size:
            raise InvalidArgument.field(
                f"{window.field}.shared_memory_byte_size",
                window.byte_size,
                f"offset {window.offset} + byte_size {window.byte_size} is past the end of "
                f"region {status.name!r} ({status.byte_size} bytes)",
            )
        return np.frombuffer(
            region.memory, np.uint8, window.byte_size, region.start + window.offset
        )
