"""docs/architecture.md's module map is true: every module it names imports, and it names every
module of the server, the client and the contract."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAP = (ROOT / "docs" / "architecture.md").read_text().split("## Module map", 1)[1].split("\n## ")[0]
NAMED = sorted(set(re.findall(r"`(torchwire(?:\.\w+)*)`", MAP)))
#: Source folders and the import package each is installed as (pyproject's package-dir).
PACKAGES = {
    "service": "torchwire.service",
    "client": "torchwire.client",
    "protos/torchwire": "torchwire",
}


def _has_code(path: Path) -> bool:
    """A module with more than its docstring (an `__init__.py` may hold only that)."""
    body = ast.parse(path.read_text()).body
    return len(body) > (1 if body and isinstance(body[0], ast.Expr) else 0)


def _modules() -> set[str]:
    found = set()
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                if not _has_code(path):
                    continue
                parts = parts[:-1]
            found.add(".".join((package, *parts)))
    return found


@pytest.mark.parametrize("module", NAMED)
def test_every_module_in_the_map_imports(module: str) -> None:
    importlib.import_module(module)


def test_the_map_names_every_module() -> None:
    assert _modules() - set(NAMED) == set()


#: Per layer, the imports it must not make (module prefixes): arrows point down only.
FORBIDDEN_IMPORTS = {
    "service/core": (
        "grpc",
        "torchwire.v1",
        "torchwire.kserve",
        "torchwire.service.store",
        "torchwire.service.app",
        "torchwire.service.api",
    ),
    "service/store": ("grpc", "torchwire.v1", "torchwire.service.app", "torchwire.service.api"),
    "service/app": ("grpc", "torchwire.service.api"),
    "service/api": ("torchwire.service.store",),
}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, lazy imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN_IMPORTS))
def test_layers_import_only_downwards(layer: str) -> None:
    forbidden = FORBIDDEN_IMPORTS[layer]
    wrong = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / layer).rglob("*.py")
        for module in _imports(path)
        if module.startswith(forbidden)
    }
    assert wrong == set()
