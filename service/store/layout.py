"""Names and paths in the local store."""

from pathlib import Path


class StoreLayout:
    """Where things live under the store root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def registry(self) -> Path:
        return self.root / "registry.sqlite3"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def data(self) -> Path:
        """The data root every server has: files that sources may read."""
        return self.root / "data"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def version_dir(self, name: str, version: int) -> Path:
        """A version's files: its checkpoint and its artifacts."""
        return self.model_dir(name) / str(version)

    def model_checkpoint(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / "model.pt"

    @property
    def imports(self) -> Path:
        """Uploads of ImportModel while they arrive and are checked; emptied at start."""
        return self.root / "imports"
