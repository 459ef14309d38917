"""Where models, jobs and datasets live: files under one root plus an SQLite registry."""

from collections.abc import Sequence
from pathlib import Path

from torchwire.service.store.datasets import DatasetCatalog
from torchwire.service.store.layout import StoreLayout
from torchwire.service.store.registry import Registry
from torchwire.service.store.versions import VersionStore


class Store:
    """The local store: the embedded default, a directory and the SQLite file inside it."""

    def __init__(
        self,
        root: Path,
        max_upload_bytes: int,
        data_roots: Sequence[Path] = (),
        allow_download: bool = False,
    ) -> None:
        """`<root>/data` is always a data root; `data_roots` adds others."""
        self.layout = StoreLayout(root)
        self.registry = Registry(self.layout.registry)
        self.versions = VersionStore(self.layout, self.registry)
        self.layout.data.mkdir(parents=True, exist_ok=True)
        self.datasets = DatasetCatalog(
            self.layout.datasets,
            self.registry,
            max_upload_bytes,
            (self.layout.data, *data_roots),
            allow_download,
        )

    def close(self) -> None:
        """Closes the registry."""
        self.registry.close()
