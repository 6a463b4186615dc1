"""Layers: only the Dagster layer, the code location and the tutorial face import Dagster."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "volara_assets"
#: Where Dagster may be imported: the Dagster layer, the code location, volara's tutorial API.
DAGSTER_ALLOWED = ("orchestration/", "definitions.py", "blockwise/")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_dagster_layer_imports_dagster() -> None:
    offenders = []
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(DAGSTER_ALLOWED):
            continue
        checked += 1
        if any(name.startswith("dagster") for name in _imports(path)):
            offenders.append(rel)
    assert checked >= 25  # the core: geometry, config, tables, ops/, storage/, runtime/, ...
    assert offenders == []


def test_kernels_and_storage_never_import_the_runtime_or_the_dagster_layer() -> None:
    for layer in ("ops", "storage"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            text = path.read_text()
            for upper in ("runtime", "orchestration", "blockwise"):
                assert f"volara_assets.{upper}" not in text and f"..{upper}" not in text, (
                    f"{path.relative_to(PACKAGE)} imports {upper}"
                )
