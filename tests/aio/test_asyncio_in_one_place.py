"""asyncio appears in one module of the package only: the galaxy_trio.aio bridge (everything else is trio)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "galaxy_trio"


def _imports_asyncio(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "asyncio" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "asyncio":
            return True
    return False


def test_only_the_bridge_imports_asyncio() -> None:
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if _imports_asyncio(p))
    assert importers == ["aio.py"]
