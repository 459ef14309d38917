"""What the store holds, as the API shows it: datasets (listed and uploaded), model versions
with their artifacts and batching, artifact downloads, and the job list."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchwire.service.app.prediction import LoadedRuntime
from torchwire.service.app.serving import BatchingInForce, ModelService
from torchwire.service.core.datasets import DatasetInfo
from torchwire.service.core.records import JobRecord, ModelVersionRecord
from torchwire.service.store import Store


@dataclass(frozen=True)
class ModelView:
    """A model's versions, each version's artifacts (format -> metadata) and loaded runtimes,
    and its batching."""

    name: str
    versions: list[ModelVersionRecord]
    artifacts: dict[int, dict[str, dict[str, Any]]]
    batching: BatchingInForce
    loaded: dict[int, list[LoadedRuntime]]


@dataclass(frozen=True)
class ArtifactChunk:
    """One piece of a stored artifact, with the artifact's metadata on the first."""

    offset: int
    data: bytes
    artifact: dict[str, Any] | None


class Catalog:
    """Read views of the store, and dataset uploads.

    Args:
        store: where datasets, model versions, artifacts and jobs are recorded.
        serving: for the batching in force of each model.
    """

    def __init__(self, store: Store, serving: ModelService) -> None:
        self._store = store
        self._serving = serving

    def upload_dataset(
        self,
        name: str,
        split: str,
        classes: list[str],
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    ) -> DatasetInfo:
        """Stores an uploaded dataset split, chunk by chunk (see `DatasetCatalog.upload`)."""
        return self._store.datasets.upload(name, split, classes, chunks)

    def datasets(self) -> list[DatasetInfo]:
        """Built-in, plugin and uploaded datasets."""
        return self._store.datasets.all()

    def jobs(self, state: str, model_name: str, limit: int) -> list[JobRecord]:
        """Jobs, newest first, optionally of one state and one model."""
        return self._store.registry.list_jobs(state, model_name, limit)

    def model(self, name: str) -> ModelView:
        """One model with all its versions.

        Raises:
            NotFound: no model has this name.
        """
        return self._view(name, self._store.versions.versions(name))

    def models(self) -> list[ModelView]:
        """Every model, by name."""
        return [self._view(name, versions) for name, versions in self._store.versions.all().items()]

    def version(self, name: str, version: int, field: str = "model_name") -> ModelVersionRecord:
        """One version (0: the latest); `field` names the request field in errors.

        Raises:
            NotFound: the model or the version does not exist.
        """
        return self._store.versions.get(name, version, field)

    def artifacts(self, record: ModelVersionRecord) -> dict[str, dict[str, Any]]:
        """A version's artifacts: format -> metadata."""
        return self._store.versions.artifacts(record)

    def _view(self, name: str, versions: list[ModelVersionRecord]) -> ModelView:
        return ModelView(
            name,
            versions,
            {v.version: self._store.versions.artifacts(v) for v in versions},
            self._serving.batching_in_force(name),
            self._serving.loaded(name),
        )

    def artifact_chunks(
        self, name: str, version: int, fmt: str, chunk_bytes: int
    ) -> Iterator[ArtifactChunk]:
        """A stored artifact in pieces of `chunk_bytes`, checked against its sha256 first.

        Raises:
            NotFound: the model or version does not exist.
            FailedPrecondition: the version has no artifact of this format, or it is corrupt.
        """
        record = self._store.versions.get(name, version)
        meta, path = self._store.versions.artifact(record, fmt)
        for offset, data in self._store.versions.read_artifact(path, chunk_bytes):
            yield ArtifactChunk(offset, data, meta if offset == 0 else None)
