"""Block executors: serial, a process pool and a real Dask ``LocalCluster`` give identical results.

The whole pipeline runs through Dagster (``materialize``) on a small demo volume
whose 12 blocks form one partition, once per executor; fragments and segments
must be bitwise identical and the node and edge rows identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from dagster import AssetKey, materialize

from volara_assets.config import ExecutorConfig, PipelineConfig
from volara_assets.demo import write_demo
from volara_assets.orchestration.assets import build_pipeline_assets
from volara_assets.orchestration.resources import BlockExecutor
from volara_assets.runtime.executors import open_executor, run_blocks
from volara_assets.storage.arrays import open_array
from volara_assets.storage.graph import GraphStore

SHAPE = (24, 64, 64)
BLOCK = (8, 32, 32)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("executors") / "demo.zarr"
    return write_demo(path, SHAPE, seed=0, chunks=BLOCK)


def _config(container: Path, out: Path) -> PipelineConfig:
    data = {
        "name": "ex",
        "affinities": str(container / "affs_noisy"),
        "neighborhood": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "fragments_array": str(out / "out.zarr" / "fragments"),
        "segments_array": str(out / "out.zarr" / "segments"),
        "lut_path": str(out / "lut.npz"),
        "db_url": f"sqlite:///{out / 'db.sqlite'}",
        "block_size": list(BLOCK),
        "context": [2, 2, 2],
        # All 3 x 2 x 2 blocks in one partition: one materialize call runs them all.
        "blocks_per_partition": [3, 2, 2],
        "fragments": {"bias": [-0.5, -0.5, -0.5]},
        "edges": {"scores": {"zyx_aff": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}},
        "lut": {"weights": {"zyx_aff": [1.0, -0.5]}},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.yaml").write_text(yaml.safe_dump(data))
    return PipelineConfig.from_yaml(out / "pipeline.yaml")


def _run(container: Path, out: Path, executor: BlockExecutor) -> dict[str, np.ndarray]:
    config = _config(container, out)
    built = build_pipeline_assets(config)
    (key,) = built.partitions.get_partition_keys()
    result = materialize(
        built.assets,
        resources={**built.resources, "block_executor": executor},
        partition_key=key,
        selection=[
            AssetKey(["ex", n]) for n in ("fragments", "fragment_nodes", "edges")
        ],
    )
    assert result.success
    lut = materialize(
        built.assets,
        resources={**built.resources, "block_executor": executor},
        selection=[AssetKey(["ex", "lut"])],
    )
    assert lut.success
    result = materialize(
        built.assets,
        resources={**built.resources, "block_executor": executor},
        partition_key=key,
        selection=[AssetKey(["ex", "segments"])],
    )
    assert result.success
    store = GraphStore(
        config.db_url, node_attrs=config.node_attrs, edge_attrs=config.edge_attrs
    )
    nodes, edges = store.read_nodes(), store.read_edges()
    store.dispose()
    return {
        "fragments": open_array(config.fragments_array)[...],
        "segments": open_array(config.segments_array)[...],
        "node_ids": nodes.ids,
        "node_positions": nodes.positions,
        "node_sizes": nodes.sizes,
        "edge_u": edges.u,
        "edge_v": edges.v,
        "edge_score": edges.scores["zyx_aff"],
    }


def test_serial_processes_and_dask_identical(container: Path, tmp_path: Path) -> None:
    serial = _run(container, tmp_path / "serial", BlockExecutor(kind="serial"))
    assert serial["fragments"].any() and len(serial["edge_u"]) > 0
    others = {
        "processes": _run(
            container, tmp_path / "processes", BlockExecutor(kind="processes", num_workers=2)
        ),
        "dask": _run(container, tmp_path / "dask", BlockExecutor(kind="dask", num_workers=2)),
    }
    for kind, result in others.items():
        for name, expected in serial.items():
            np.testing.assert_array_equal(result[name], expected, err_msg=f"{kind}: {name}")


def _where(_: int) -> int:
    import os

    return os.getpid()


def test_dask_runs_on_worker_processes() -> None:
    import os

    with open_executor(ExecutorConfig(kind="dask", num_workers=2)) as pool:
        pids = {o.result for o in run_blocks(pool, _where, range(8))}
    assert pids and os.getpid() not in pids


def test_failures_are_reported_per_block() -> None:
    def fail_on_odd(i: int) -> int:
        if i % 2:
            raise ValueError(f"odd {i}")
        return i

    with open_executor(ExecutorConfig(kind="serial")) as pool:
        outcomes = sorted(run_blocks(pool, fail_on_odd, range(4)), key=lambda o: o.item)
    assert [o.result for o in outcomes[::2]] == [0, 2]
    assert [o.error for o in outcomes[1::2]] == ["ValueError: odd 1", "ValueError: odd 3"]
