"""Where models, jobs and datasets live: files under one root plus an SQLite registry."""

from pathlib import Path

from torchwire.service.store.datasets import DatasetCatalog
from torchwire.service.store.layout import StoreLayout
from torchwire.service.store.models import ModelStore
from torchwire.service.store.registry import Registry


class Store:
    """The local store: the embedded default, a directory and the SQLite file inside it."""

    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.layout = StoreLayout(root)
        self.registry = Registry(self.layout.registry)
        self.models = ModelStore(self.layout, self.registry)
        self.datasets = DatasetCatalog(self.layout.datasets, self.registry, max_upload_bytes)

    def close(self) -> None:
        """Closes the registry."""
        self.registry.close()
