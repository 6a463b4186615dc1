"""Shared fixtures for the Dagster-layer tests: one small demo volume and pipelines over it.

The demo volume is generated once per session. Every test that runs the pipeline
writes its outputs (fragments, segments, LUT, SQLite graph) into its own folder,
so tests never see each other's results. Inputs are chunked (4, 16, 16): finer
than a (8, 32, 32) block, so a corrupt input chunk in a corner reaches only the
one block whose read ROI (block + context) covers it.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, AssetsDefinition, Definitions

from volara_assets.config import PipelineConfig
from volara_assets.demo import write_demo
from volara_assets.orchestration.assets import PipelineAssets, build_pipeline_assets
from volara_assets.orchestration.resources import BlockExecutor

REPO = Path(__file__).resolve().parent.parent
DEMO_SHAPE = (24, 64, 64)
DEMO_CHUNKS = (4, 16, 16)
BLOCK_SIZE = (8, 32, 32)
CONTEXT = (2, 2, 2)
#: The steps of the pipeline in dependency order (asset names under the pipeline's prefix).
STEPS = ("fragments", "fragment_nodes", "edges", "lut", "segments")


@pytest.fixture(scope="session")
def demo_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo container (raw, labels, mask, affs, affs_noisy), written once per session."""
    path = tmp_path_factory.mktemp("volume") / "demo.zarr"
    write_demo(path, shape=DEMO_SHAPE, seed=0, chunks=DEMO_CHUNKS)
    return path


def copy_volume(volume: Path, dest_dir: Path) -> Path:
    """A private copy of the demo container (for tests that modify the input)."""
    dest = dest_dir / volume.name
    shutil.copytree(volume, dest)
    return dest


def write_pipeline_yaml(
    out_dir: Path,
    volume: Path,
    *,
    name: str = "demo",
    block_size: Sequence[int] = BLOCK_SIZE,
    context: Sequence[int] = CONTEXT,
    blocks_per_partition: Sequence[int] = (1, 1, 1),
    affinities: str = "affs",
    ground_truth: bool = True,
) -> Path:
    """Write ``out_dir/pipeline.yaml`` for ``volume``; every output goes under ``out_dir``.

    The parameters are those of ``pipelines/demo.yaml`` (volara's tutorial) with
    the given grid.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "name": name,
        "affinities": str(volume / affinities),
        "neighborhood": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "fragments_array": str(out_dir / "out.zarr" / "fragments"),
        "segments_array": str(out_dir / "out.zarr" / "segments"),
        "lut_path": str(out_dir / "out.zarr" / "lut.npz"),
        "db_url": f"sqlite:///{out_dir / 'graph.sqlite'}",
        "block_size": list(block_size),
        "context": list(context),
        "blocks_per_partition": list(blocks_per_partition),
        "fragments": {"bias": [-0.5, -0.5, -0.5]},
        "edges": {"scores": {"zyx_aff": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}},
        "lut": {"weights": {"zyx_aff": [1.0, -0.5]}},
    }
    if ground_truth:
        doc["ground_truth"] = str(volume / "labels")
    path = out_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class BuiltPipeline:
    """A pipeline's assets and resources, ready for ``dagster.materialize``."""

    config: PipelineConfig
    built: PipelineAssets

    @property
    def assets(self) -> list[Any]:
        """Assets and asset checks, as the code location serves them."""
        return [*self.built.assets, *self.built.asset_checks]

    @property
    def resources(self) -> dict[str, Any]:
        # Serial blocks: deterministic logs, and no worker start-up cost on a tiny volume.
        return {"block_executor": BlockExecutor(kind="serial"), **self.built.resources}

    @property
    def partition_keys(self) -> list[str]:
        return list(self.built.pipeline.grid.partition_keys)

    def key(self, name: str) -> AssetKey:
        return self.built.key(name)

    def keys(self, *names: str) -> list[AssetKey]:
        return [self.key(n) for n in names]

    def asset_def(self, name: str) -> AssetsDefinition:
        key = self.key(name)
        for a in self.built.assets:
            if isinstance(a, AssetsDefinition) and key in a.keys:
                return a
        raise KeyError(key)


def build_pipeline(yaml_path: Path) -> BuiltPipeline:
    """Assets and resources of the pipeline in ``yaml_path`` (via ``build_pipeline_assets``)."""
    config = PipelineConfig.from_yaml(yaml_path)
    return BuiltPipeline(config, build_pipeline_assets(config))


def build_defs(yaml_path: Path) -> Definitions:
    """The code location's ``Definitions`` for ``yaml_path`` (via ``build_definitions``).

    ``volara_assets.definitions`` builds ``defs`` from ``VOLARA_PIPELINES`` (default:
    the demo pipeline under ``data/``, absent in a fresh clone) when first imported,
    so the import happens with ``VOLARA_PIPELINES`` pointing at ``yaml_path``.
    """
    saved = os.environ.get("VOLARA_PIPELINES")
    os.environ["VOLARA_PIPELINES"] = str(yaml_path)
    try:
        from volara_assets.definitions import build_definitions
    finally:
        if saved is None:
            del os.environ["VOLARA_PIPELINES"]
        else:
            os.environ["VOLARA_PIPELINES"] = saved
    return build_definitions([PipelineConfig.from_yaml(yaml_path)])


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_dagster_home(path: Path) -> Path:
    """A fresh ``DAGSTER_HOME`` holding the repository's ``dagster.yaml`` (SQLite, no telemetry)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", path / "dagster.yaml")
    return path


def subprocess_env(pipeline_yaml: Path, dagster_home: Path) -> dict[str, str]:
    """Environment for ``dagster`` / ``dagster-webserver`` subprocesses on one pipeline."""
    env = dict(os.environ)
    env.update(
        VOLARA_PIPELINES=str(pipeline_yaml),
        DAGSTER_HOME=str(dagster_home),
        VOLARA_EXECUTOR="serial",
        VOLARA_NUM_WORKERS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("VOLARA_DASK_ADDRESS", None)
    return env


def dagster_bin(name: str) -> str:
    """The ``name`` console script of the venv running the tests."""
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
