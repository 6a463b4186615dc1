"""Nothing let in: every kind of bad input is refused before a write, naming the field.

Refusals at load (config and data checks) are tried in-process on the code
location's asset factory and, for a few representative kinds, through the real
CLI; both then look at the disk: no output array, LUT or database was created.
Refusals per block (NaN or out-of-range float affinities, a corrupt chunk) fail
only the blocks that hold the bad values.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import (
    BLOCK_SIZE,
    build_pipeline,
    copy_volume,
    dagster_bin,
    make_dagster_home,
    subprocess_env,
    write_pipeline_yaml,
)
from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from volara_assets.config import PipelineConfig
from volara_assets.geometry import Roi
from volara_assets.runtime.bound import BoundPipeline
from volara_assets.runtime.jobs import EdgesJob, FragmentsJob, SegmentsJob
from volara_assets.storage.arrays import create_array, open_array

DEMO_VOXEL_SIZE = (290, 260, 260)


def tree_digest(path: Path) -> str:
    """A digest of every file name and content under ``path`` (to show an input is untouched)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def edit_yaml(path: Path, **changes: Any) -> Path:
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def small_array(path: Path, shape=(24, 64, 64), offset=(0, 0, 0), voxel_size=DEMO_VOXEL_SIZE):
    array = create_array(
        path, shape, np.uint8, offset=offset, voxel_size=voxel_size, chunks=(8, 32, 32)
    )
    array.write(Roi((0, 0, 0), shape), np.ones(shape, dtype=np.uint8))
    return array


# --------------------------------------------------------------------- refused at load
#
# Each case: a function that changes the pipeline folder ``out`` (and returns the
# YAML changes), and the parts of the message the user must see.

Setup = Callable[[Path, Path], dict[str, Any]]


# A SQLAlchemy dialect whose driver this environment lacks (the first of a few).
MISSING_DRIVER = next(
    url
    for url, module in (
        ("postgresql+pg8000", "pg8000"),
        ("mysql+mysqldb", "MySQLdb"),
        ("oracle+oracledb", "oracledb"),
    )
    if importlib.util.find_spec(module) is None
)


def _blocker(out: Path) -> Path:
    """A plain file where a folder would have to be made."""
    (out / "blocker").write_text("a file, not a folder")
    return out / "blocker"


LOAD_CASES: dict[str, tuple[Setup, list[str]]] = {
    "db url with an unknown scheme": (
        lambda out, vol: {"db_url": "mongodb://localhost/graph"},
        ["db_url: unknown database scheme 'mongodb'", "expected a SQLAlchemy dialect"],
    ),
    "db url that is no URL": (
        lambda out, vol: {"db_url": "graph.sqlite"},
        ["db_url: 'graph.sqlite' is not a SQLAlchemy URL", "sqlite:///"],
    ),
    "db driver not installed": (
        lambda out, vol: {"db_url": f"{MISSING_DRIVER}://user@localhost/graph"},
        [f"db_url: the driver of '{MISSING_DRIVER}'", "is not installed"],
    ),
    "sqlite folder cannot be made": (
        lambda out, vol: {"db_url": f"sqlite:///{_blocker(out)}/sub/graph.sqlite"},
        ["db_url: cannot create", "blocker is a file, expected a folder"],
    ),
    "sqlite file is a folder": (
        lambda out, vol: (out / "graph.sqlite").mkdir() or {},
        ["db_url: the SQLite database", "graph.sqlite exists and is not a file"],
    ),
    "segments written to the fragments array": (
        lambda out, vol: {"segments_array": str(out / "out.zarr" / "fragments")},
        ["segments_array:", "fragments is the fragments_array output", "its own path"],
    ),
    "fragments written over the affinities": (
        lambda out, vol: {"fragments_array": str(vol / "affs")},
        ["fragments_array:", "affs is the affinities input", "never written"],
    ),
    "segments inside the ground truth array": (
        lambda out, vol: {"segments_array": str(vol / "labels" / "segments")},
        ["segments_array:", "lies inside the ground_truth input"],
    ),
    "lut inside an output array": (
        lambda out, vol: {"lut_path": str(out / "out.zarr" / "segments" / "lut.npz")},
        ["lut_path:", "lut.npz lies inside the segments_array output"],
    ),
    "sqlite database over the mask": (
        lambda out, vol: {"mask": str(vol / "mask"), "db_url": f"sqlite:///{vol / 'mask'}"},
        ["db_url:", "mask is the mask input"],
    ),
    "lut_path is an existing folder": (
        lambda out, vol: (out / "out.zarr" / "lut.npz").mkdir(parents=True) or {},
        ["lut_path:", "lut.npz exists and is not a file", "expected a .npz file path"],
    ),
    "lut folder cannot be made": (
        lambda out, vol: {"lut_path": str(_blocker(out) / "lut.npz")},
        ["lut_path: cannot create", "blocker is a file, expected a folder"],
    ),
    "fragments folder cannot be made": (
        lambda out, vol: {"fragments_array": str(_blocker(out) / "out.zarr" / "fragments")},
        ["fragments_array: cannot create", "blocker is a file, expected a folder"],
    ),
    "missing affinities": (
        lambda out, vol: {"affinities": str(vol / "nothing_here")},
        ["affinities: no zarr array at", "nothing_here"],
    ),
    "affinities with the wrong number of channels": (
        lambda out, vol: {"neighborhood": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 2]],
                          "fragments": {"bias": [-0.5] * 4}},
        ["affinities: expected 4 channels", "got 3"],
    ),
    "mask of another shape": (
        lambda out, vol: {"mask": str(small_array(out / "in.zarr" / "m", shape=(24, 64, 32)).path)},
        ["mask: expected shape (24, 64, 64) like the affinities", "got (24, 64, 32)"],
    ),
    "mask with another offset": (
        lambda out, vol: {"mask": str(small_array(out / "in.zarr" / "m", offset=(290, 0, 0)).path)},
        ["mask: expected offset (0, 0, 0) like the affinities", "got (290, 0, 0)"],
    ),
    "ground truth with another voxel size": (
        lambda out, vol: {"ground_truth": str(
            small_array(out / "in.zarr" / "gt", voxel_size=(40, 4, 4)).path
        )},
        ["ground_truth: expected voxel_size (290, 260, 260) like the affinities",
         "got (40, 4, 4)"],
    ),
    "fragments array from an earlier block size": (
        lambda out, vol: create_array(
            out / "out.zarr" / "fragments", (24, 64, 64), np.uint64, offset=(0, 0, 0),
            voxel_size=DEMO_VOXEL_SIZE, chunks=(4, 16, 16),
        ) and {},
        ["fragments_array: the array at", "has chunks (4, 16, 16), this config needs "
         "(8, 32, 32) (one chunk per block); delete it", "or set fragments_array to another"],
    ),
    "segments array with another dtype": (
        lambda out, vol: create_array(
            out / "out.zarr" / "segments", (24, 64, 64), np.uint32, offset=(0, 0, 0),
            voxel_size=DEMO_VOXEL_SIZE, chunks=BLOCK_SIZE,
        ) and {},
        ["segments_array: the array at", "has dtype uint32, this config needs uint64"],
    ),
    "segments array of another shape": (
        lambda out, vol: create_array(
            out / "out.zarr" / "segments", (24, 64, 96), np.uint64, offset=(0, 0, 0),
            voxel_size=DEMO_VOXEL_SIZE, chunks=BLOCK_SIZE,
        ) and {},
        ["segments_array: the array at", "has shape (24, 64, 96), this config needs (24, 64, 64)"],
    ),
    "injection-like score name": (
        lambda out, vol: {
            "edges": {"scores": {"aff; DROP TABLE nodes; --": [[1, 0, 0]]}},
            "lut": {"weights": {"aff; DROP TABLE nodes; --": [1.0, -0.5]}},
        },
        ["edges.scores: score name 'aff; DROP TABLE nodes; --' must be a plain identifier"],
    ),
    "injection-like node attribute": (
        lambda out, vol: {"fragments": {"bias": [-0.5] * 3, "node_attrs": {"x); --": "float"}}},
        ["fragments.node_attrs: 'x); --' must be a plain identifier"],
    ),
}


@pytest.mark.parametrize("kind", list(LOAD_CASES))
def test_bad_input_is_refused_at_load_before_any_write(
    kind: str, demo_volume: Path, tmp_path: Path
) -> None:
    setup, expected = LOAD_CASES[kind]
    out = tmp_path / "pipeline"
    yaml_path = write_pipeline_yaml(out, demo_volume)
    volume_before = tree_digest(demo_volume)
    changes = setup(out, demo_volume)
    edit_yaml(yaml_path, **changes)
    before = files_under(out)

    with pytest.raises(ValueError) as info:
        build_pipeline(yaml_path)
    message = str(info.value)
    for part in expected:
        assert part in message, (part, message)
    # Nothing was written: no output array, LUT or database appeared, no file changed.
    assert files_under(out) == before
    assert not (out / "graph.sqlite").is_file()
    assert tree_digest(demo_volume) == volume_before


def test_an_existing_output_array_is_left_untouched_when_refused(
    demo_volume: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pipeline"
    yaml_path = write_pipeline_yaml(out, demo_volume)
    old = create_array(
        out / "out.zarr" / "fragments", (24, 64, 64), np.uint64, offset=(0, 0, 0),
        voxel_size=DEMO_VOXEL_SIZE, chunks=(4, 16, 16),
    )
    old.write(Roi((0, 0, 0), (4, 16, 16)), np.full((4, 16, 16), 7, dtype=np.uint64))
    before = tree_digest(out / "out.zarr")
    with pytest.raises(ValueError, match="fragments_array: the array at"):
        build_pipeline(yaml_path)
    assert tree_digest(out / "out.zarr") == before


def test_a_python_yaml_tag_is_refused_and_never_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "constructed"
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"name: !!python/object/apply:os.system ['touch {marker}']\naffinities: a.zarr/affs\n"
    )
    with pytest.raises(ValueError) as info:
        PipelineConfig.from_yaml(path)
    assert f"{path}: not a plain YAML pipeline file" in str(info.value)
    assert "python/object/apply:os.system" in str(info.value)
    assert not marker.exists()


# --------------------------------------------------------------------- refused through the CLI


def materialize_cli(pipeline_yaml: Path, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            dagster_bin("dagster"), "asset", "materialize", "-m", "volara_assets.definitions",
            "--select", "demo/fragments,demo/fragment_nodes", "--partition", "z0_y0_x0",
        ],
        env=subprocess_env(pipeline_yaml, home),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    "kind",
    ["db url with an unknown scheme", "sqlite folder cannot be made",
     "segments written to the fragments array", "lut_path is an existing folder"],
)
def test_cli_refuses_bad_input_before_any_write(kind: str, demo_volume: Path, tmp_path: Path):
    setup, expected = LOAD_CASES[kind]
    out = tmp_path / "pipeline"
    yaml_path = write_pipeline_yaml(out, demo_volume)
    edit_yaml(yaml_path, **setup(out, demo_volume))
    before = files_under(out)
    home = make_dagster_home(tmp_path / "home")

    proc = materialize_cli(yaml_path, home, tmp_path)
    assert proc.returncode != 0
    for part in expected:
        assert part in proc.stdout + proc.stderr, part
    assert files_under(out) == before
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []


# --------------------------------------------------------------------- refused per block


def float_affinities(volume: Path, out: Path, edit: Callable[[np.ndarray], None]) -> Path:
    """A float32 copy of the demo affinities in [0, 1], changed by ``edit``, at ``out``."""
    src = open_array(volume / "affs")
    data = src.read(src.volume_roi).astype(np.float32) / np.float32(255.0)
    edit(data)
    dst = create_array(
        out, src.spatial_shape, np.float32, offset=src.offset, voxel_size=src.voxel_size,
        chunks=src.spatial_chunks, num_channels=src.num_channels,
        channel_axis_name=src.axis_names[0], axis_names=src.axis_names[-3:],
    )
    dst.write(src.volume_roi, data)
    return out


def _nan_in_last_block(data: np.ndarray) -> None:
    data[1, 20, 50, 50] = np.nan


def _scaled_0_255(data: np.ndarray) -> None:
    data *= np.float32(255.0)


@pytest.mark.parametrize(
    ("edit", "failing", "expected"),
    [
        (_nan_in_last_block, {"z2_y1_x1"}, ["1 NaN values in the voxels", "expected float "
                                            "affinities in [0, 1]"]),
        (_scaled_0_255, "all", ["values in [0, 255] in the voxels", "(stored as 0..255? "
                                "store uint8, or divide by 255)"]),
    ],
    ids=["nan", "0..255"],
)
def test_bad_float_affinities_fail_their_blocks_before_the_kernel(
    edit, failing, expected, demo_volume: Path, tmp_path: Path
) -> None:
    affs = float_affinities(demo_volume, tmp_path / "in.zarr" / "affs", edit)
    out = tmp_path / "pipeline"
    yaml_path = write_pipeline_yaml(out, demo_volume)
    edit_yaml(yaml_path, affinities=str(affs))
    bp = build_pipeline(yaml_path)
    keys = bp.partition_keys
    failing = set(keys) if failing == "all" else failing
    instance = DagsterInstance.ephemeral()

    result = materialize(
        bp.assets, selection=bp.keys("fragments", "fragment_nodes"), resources=bp.resources,
        instance=instance, raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )
    assert not result.success
    [failure] = result.get_step_failure_events()
    text = failure.step_failure_data.user_failure_data.description
    assert f"{len(failing)} of {len(keys)} blocks failed" in text
    for key in failing:
        line = next(x for x in text.splitlines() if x.strip().startswith(f"{key}:"))
        assert f"affinities {affs}:" in line
        for part in expected:
            assert part in line, (part, line)
    # Every other block went on and was recorded; the failing ones wrote nothing.
    assert instance.get_materialized_partitions(bp.key("fragments")) == set(keys) - failing
    frags = open_array(bp.config.fragments_array)
    grid = bp.built.pipeline.grid
    rows = bp.built.pipeline.graph.store().rows_per_block("nodes", range(grid.num_blocks))
    for key in failing:
        [block] = grid.partition_blocks(key)
        assert not frags.read(block.write_roi).any(), key
        assert rows[block.index] == 0, key
    assert all(rows[b.index] > 0 for k in set(keys) - failing for b in grid.partition_blocks(k))
    if failing == set(keys):
        assert not (Path(bp.config.fragments_array) / "c").exists()


# --------------------------------------------------------------------- any input chunking


def run_blocks_in_order(pipeline: BoundPipeline) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    from volara_assets.ops.agglomerate import agglomerate
    from volara_assets.storage.lut import save_lut

    c, g = pipeline.config, pipeline.grid
    pipeline.prepare_outputs()
    blocks = range(g.num_blocks)
    for job in (
        FragmentsJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph),
        EdgesJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph),
    ):
        for i in blocks:
            job(i)
    store = pipeline.graph.store()
    save_lut(pipeline.lut.path, agglomerate(store.read_nodes().ids, store.read_edges(),
                                            c.lut.weights))
    seg = SegmentsJob(g, pipeline.fragments, pipeline.segments, pipeline.lut)
    for i in blocks:
        seg(i)
    whole = g.volume_roi
    return (
        open_array(c.fragments_array).read(whole),
        open_array(c.segments_array).read(whole),
        store.read_nodes(),
        store.read_edges(),
    )


def test_input_chunks_not_aligned_with_blocks_give_the_same_result(
    demo_volume: Path, tmp_path: Path
) -> None:
    # (5, 13, 11) chunks straddle every (8, 32, 32) block border and the context around it.
    src = open_array(demo_volume / "affs")
    assert tuple(src.spatial_chunks) == (4, 16, 16)
    unaligned = create_array(
        tmp_path / "in.zarr" / "affs", src.spatial_shape, src.dtype, offset=src.offset,
        voxel_size=src.voxel_size, chunks=(5, 13, 11), num_channels=src.num_channels,
        channel_axis_name=src.axis_names[0], axis_names=src.axis_names[-3:],
    )
    unaligned.write(src.volume_roi, src.read(src.volume_roi))
    results = []
    for name, affs in (("aligned", demo_volume / "affs"), ("unaligned", unaligned.path)):
        yaml_path = write_pipeline_yaml(tmp_path / name, demo_volume)
        edit_yaml(yaml_path, affinities=str(affs))
        results.append(run_blocks_in_order(BoundPipeline(PipelineConfig.from_yaml(yaml_path))))
    (fa, sa, na, ea), (fb, sb, nb, eb) = results
    assert fa.any() and sa.any()
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(sa, sb)
    assert len(na) > 10 and len(ea) > 10
    np.testing.assert_array_equal(na.ids, nb.ids)
    np.testing.assert_array_equal(na.positions, nb.positions)
    np.testing.assert_array_equal(ea.u, eb.u)
    np.testing.assert_array_equal(ea.v, eb.v)
    for name in ea.scores:
        np.testing.assert_array_equal(ea.scores[name], eb.scores[name])


def test_a_corrupt_input_chunk_is_named(demo_volume: Path, tmp_path: Path) -> None:
    volume = copy_volume(demo_volume, tmp_path)
    chunk = volume / "affs" / "c" / "0" / "5" / "3" / "3"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00not zstd\xff" * 9)
    yaml_path = write_pipeline_yaml(tmp_path / "pipeline", volume)
    pipeline = BoundPipeline(PipelineConfig.from_yaml(yaml_path))
    pipeline.prepare_outputs()
    c, g = pipeline.config, pipeline.grid
    job = FragmentsJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph)
    # Voxel (20, 48, 48) lies in the last block (z2_y1_x1) and in no other block's read ROI.
    with pytest.raises(ValueError) as info:
        job(g.num_blocks - 1)
    assert f"chunk file {chunk} cannot be decoded" in str(info.value)
    assert job(0)["fragments"] > 0
