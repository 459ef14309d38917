"""Files: checksums, and writes that appear complete or not at all."""

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    """Flushes a file's data to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Makes a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path, sync_dir: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `path` for the caller to write; when the block ends,
    the file is flushed to disk and renamed over `path`.

    `path` appears complete or not at all: if the block raises, the temporary file is
    removed and `path` is left as it was.

    Args:
        path: the file to write; its directory is created if needed.
        sync_dir: also make the rename durable (fsync the directory), for a file that a
            record elsewhere is about to name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    scratch = Path(name)
    try:
        yield scratch
        fsync_file(scratch)
        os.replace(scratch, path)
        if sync_dir:
            fsync_dir(path.parent)
    finally:
        scratch.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: Path, scratch_in: Path, prefix: str) -> Iterator[Path]:
    """Yields a fresh scratch directory for the caller to fill; when the block ends, its files
    are flushed to disk and it replaces `target` (an older `target` is moved aside, then removed).

    `target` appears whole or not at all: if the block raises, the scratch directory is removed
    and `target` is left as it was.

    Args:
        target: the directory to write; its parent is created when the block succeeds.
        scratch_in: where the scratch directory is made (on the same file system as `target`).
        prefix: the start of the scratch directory's name, so that leftovers can be recognised.
    """
    scratch = scratch_in / f"{prefix}{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    try:
        yield scratch
        for entry in scratch.iterdir():
            if entry.is_file():
                fsync_file(entry)
        fsync_dir(scratch)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            retired = scratch.with_name(scratch.name + ".old")
            os.replace(target, retired)
            os.replace(scratch, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(scratch, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
