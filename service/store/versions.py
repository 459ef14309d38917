"""Registered model versions: checkpoints under the store, metadata in the registry."""

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchwire.service.core.files import atomic_write, sha256_of
from torchwire.service.core.records import ModelVersionRecord, VersionMetadata, check_name
from torchwire.service.errors import FailedPrecondition, InvalidArgument, NotFound, shown
from torchwire.service.store.layout import StoreLayout
from torchwire.service.store.registry import Registry


class MissingArtifact(NotFound):
    """A version has no export in the asked-for format."""


class VersionStore:
    """Registers, finds and deletes model versions."""

    def __init__(self, layout: StoreLayout, registry: Registry) -> None:
        self.layout = layout
        self.registry = registry
        # Latest version per model, for Predict's hot path. This process is the registry's
        # only writer, and register/delete below keep it true; frontend processes, which
        # only read, are told through `on_latest_change`.
        self._latest: dict[str, int] = {}
        self._latest_lock = threading.Lock()
        self.on_latest_change: Callable[[str], None] = lambda name: None
        """Told the model's name when its latest version may have changed."""

    def register(
        self,
        name: str,
        metadata: VersionMetadata,
        *,
        job_id: str = "",
        checkpoint: Path | None = None,
        artifacts: dict[str, tuple[Path, dict[str, Any]]] | None = None,
    ) -> int:
        """Copies a version's files into its directory and records it: a job's checkpoint, or
        an import's checkpoint or artifact files (format -> (file, metadata); the metadata's
        `file_name` names the copy).

        The files are complete and on disk before the registry names them, and the registry
        names the version and its artifacts in one transaction: a failure on the way
        leaves no version behind (its number stays used).
        """
        version = self.registry.next_model_version(name)
        folder = self.layout.version_dir(name, version)
        try:
            stored = ""
            if checkpoint is not None:
                target = self.layout.model_checkpoint(name, version)
                self._copy(checkpoint, target)
                metadata = replace(metadata, checkpoint_sha256=sha256_of(target))
                stored = str(target.relative_to(self.layout.root))
            for source, meta in (artifacts or {}).values():
                self._copy(source, folder / meta["file_name"])
            with self._latest_lock:
                self.registry.add_model_version(
                    ModelVersionRecord(name, version, time.time(), job_id, stored, metadata),
                    {fmt: meta for fmt, (_, meta) in (artifacts or {}).items()},
                )
                self._latest.pop(name, None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.on_latest_change(name)
        return version

    @staticmethod
    def _copy(source: Path, target: Path) -> None:
        with atomic_write(target, sync_dir=True) as scratch:
            shutil.copyfile(source, scratch)

    def forget_latest(self, name: str) -> None:
        """Drops the remembered latest version of a model: the registry's writer (another
        process) changed it."""
        with self._latest_lock:
            self._latest.pop(name, None)

    def versions(self, name: str, field: str = "name") -> list[ModelVersionRecord]:
        """All versions of a model, oldest first.

        Raises:
            InvalidArgument: the name is malformed.
            NotFound: no version of the model exists.
        """
        check_name(field, name)
        versions = self.registry.model_versions(name)
        if not versions:
            raise NotFound(f"model {shown(name)} does not exist")
        return versions

    def get(self, name: str, version: int, field: str = "model_name") -> ModelVersionRecord:
        """One version; 0 means the latest."""
        number = self.resolve(name, version, field)
        versions = self.versions(name, field)
        for record in versions:
            if record.version == number:
                return record
        raise NotFound(
            f"model {name!r} has no version {number}; it has {[r.version for r in versions]}"
        )

    def resolve(self, name: str, version: int, field: str = "model_name") -> int:
        """The version number a request means (0 means the latest), with one cheap query.

        Raises:
            InvalidArgument: the name or version is malformed.
            NotFound: the model has no version at all.
        """
        check_name(field, name)
        if version < 0:
            raise InvalidArgument.field("version", version, "must be >= 0 (0 means the latest)")
        if version:
            return version
        latest = self._latest.get(name)
        if latest is None:
            with self._latest_lock:
                latest = self.registry.latest_model_version(name)
                if latest:
                    self._latest[name] = latest
        if not latest:
            raise NotFound(f"model {shown(name)} does not exist")
        return latest

    def all(self) -> dict[str, list[ModelVersionRecord]]:
        """Every model's versions, by name."""
        grouped: dict[str, list[ModelVersionRecord]] = {}
        for record in self.registry.model_versions():
            grouped.setdefault(record.name, []).append(record)
        return grouped

    def verified_checkpoint(self, record: ModelVersionRecord) -> Path:
        """The checkpoint file, after checking it against the sha256 recorded at registration.

        Raises:
            FailedPrecondition: the version has no checkpoint (an ONNX or TorchScript import),
                or the file is missing or has changed since.
        """
        if not record.checkpoint:
            imported = record.metadata.imported
            kind = imported.format if imported is not None else "a file"
            raise FailedPrecondition(
                f"model {record.name!r} v{record.version} was imported from {kind} and has no "
                "state_dict checkpoint: it runs only on its imported runtime"
            )
        path = self.layout.root / record.checkpoint
        if not path.exists() or sha256_of(path) != record.metadata.checkpoint_sha256:
            raise FailedPrecondition(
                f"the checkpoint of {record.name!r} v{record.version} is "
                "missing or corrupt (sha256 mismatch); it will not be loaded"
            )
        return path

    def artifact_path(self, record: ModelVersionRecord, file_name: str) -> Path:
        """Where an artifact of the version lives: in its directory, beside its checkpoint."""
        return self.layout.version_dir(record.name, record.version) / file_name

    def artifacts(self, record: ModelVersionRecord) -> dict[str, dict[str, Any]]:
        """The version's artifacts: format -> metadata."""
        return self.registry.artifacts(record.name, record.version)

    def artifact(self, record: ModelVersionRecord, fmt: str) -> tuple[dict[str, Any], Path]:
        """One artifact's metadata and file, its checksum verified.

        Raises:
            MissingArtifact: the version has no artifact of this format.
            FailedPrecondition: the file is missing or does not match its recorded sha256.
        """
        meta = self.artifacts(record).get(fmt)
        if meta is None:
            raise MissingArtifact(
                f"model {record.name!r} v{record.version} has no {fmt} export; call Export first"
            )
        path = self.artifact_path(record, meta["file_name"])
        if not path.exists() or sha256_of(path) != meta["sha256"]:
            raise FailedPrecondition(
                f"the {fmt} export of {record.name!r} v{record.version} "
                "is missing or corrupt; export it again"
            )
        return meta, path

    def read_artifact(self, path: Path, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) pieces of an artifact file."""
        with open(path, "rb") as fh:
            offset = 0
            while block := fh.read(chunk_bytes):
                yield offset, block
                offset += len(block)

    def delete(self, name: str, version: int) -> list[int]:
        """Deletes one version (or all, for 0); returns the deleted version numbers.

        Registry rows go first, so an interrupted delete leaves stray files, never
        a registered version without its checkpoint.
        """
        if version < 0:
            raise InvalidArgument.field(
                "version", version, "must be >= 0 (0 deletes every version)"
            )
        doomed = [self.get(name, version, "name")] if version else self.versions(name)
        numbers = [r.version for r in doomed]
        with self._latest_lock:
            self.registry.delete_model_versions(name, numbers)
            self._latest.pop(name, None)
        self.on_latest_change(name)
        for record in doomed:
            shutil.rmtree(self.layout.version_dir(name, record.version), ignore_errors=True)
        if not version:
            self.registry.set_batching(name, None)
            shutil.rmtree(self.layout.model_dir(name), ignore_errors=True)
        return numbers
