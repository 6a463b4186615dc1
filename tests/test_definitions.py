"""The code location: ``load_definitions`` builds once per process and pipeline files' bytes."""

from __future__ import annotations

from pathlib import Path

from conftest import write_pipeline_yaml

from volara_assets.definitions import load_definitions


def test_definitions_are_built_once_until_a_pipeline_file_changes(
    demo_volume: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("VOLARA_EXECUTOR", "serial")
    path = write_pipeline_yaml(tmp_path / "p", demo_volume, name="cached")
    first = load_definitions(str(path))
    assert load_definitions(str(path)) is first  # the CLI asks several times per run
    path.write_text(path.read_text().replace("name: cached", "name: edited"))
    edited = load_definitions(str(path))
    assert edited is not first
    assert {k.path[0] for k in edited.resolve_all_asset_keys()} == {"edited"}
    monkeypatch.setenv("VOLARA_NUM_WORKERS", "2")
    assert load_definitions(str(path)) is not edited  # another block executor
