"""Names and paths in the local store."""

import re
from pathlib import Path

from torchwire.service.errors import InvalidArgument

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(field: str, value: str) -> str:
    """Validates a model or dataset name, so that no name can reach outside the store.

    Raises:
        InvalidArgument: the name is empty, too long, or has characters outside [A-Za-z0-9._-].
    """
    if not _NAME.fullmatch(value) or ".." in value:
        raise InvalidArgument.field(
            field,
            value,
            "must be 1-64 characters of [A-Za-z0-9._-], "
            "starting with a letter or digit, without '..'",
        )
    return value


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

    def model_checkpoint(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(version) / "model.pt"
