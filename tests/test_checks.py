"""Asset checks on a correct run and on deliberately broken stores; pictures in the metadata.

One reference run (all partitions, checks included) is shared; every broken-store
test breaks its own copy of the reference outputs.
"""

from __future__ import annotations

import base64
import re
import shutil
import sqlite3
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import STEPS, BuiltPipeline, build_pipeline, write_pipeline_yaml
from dagster import (
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    materialize,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from volara_assets.orchestration.checks import run_partition_keys
from volara_assets.runtime.thumbnails import encode_png, histogram_image, label_colors
from volara_assets.runtime.verify import (
    check_evaluation,
    check_fragment_ids,
    check_lut_covers_fragments,
    check_nodes_match_fragments,
    check_segments_match_lut,
)
from volara_assets.storage.lut import save_lut

INTEGRITY = {
    ("fragments", "fragment_ids_unique"),
    ("fragment_nodes", "nodes_match_fragments"),
    ("lut", "lut_covers_fragments"),
    ("segments", "segments_match_lut"),
}


@dataclass
class Reference:
    dir: Path
    bp: BuiltPipeline
    instance: DagsterInstance
    checks: dict[tuple[str, str], object]


def _evaluations(result) -> dict[tuple[str, str], object]:
    out = {}
    for event in result.all_events:
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.event_specific_data
            out[(data.asset_key.path[-1], data.check_name)] = data
    return out


def _run(bp: BuiltPipeline, instance: DagsterInstance, first: str, last: str):
    return materialize(
        bp.assets + list(bp.built.asset_checks),
        selection=bp.keys(*STEPS),
        resources=bp.resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
    )


@pytest.fixture(scope="module")
def reference(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    out = tmp_path_factory.mktemp("checks_reference")
    bp = build_pipeline(write_pipeline_yaml(out, demo_volume))
    instance = DagsterInstance.ephemeral()
    result = _run(bp, instance, bp.partition_keys[0], bp.partition_keys[-1])
    assert result.success
    return Reference(out, bp, instance, _evaluations(result))


def broken_copy(reference: Reference, demo_volume: Path, dest: Path) -> BuiltPipeline:
    """A pipeline whose outputs are a private copy of the reference run's outputs."""
    write_pipeline_yaml(dest, demo_volume)
    shutil.copytree(reference.dir / "out.zarr", dest / "out.zarr")
    # SQLite's backup API: the copy includes what still sits in the WAL file.
    with (
        sqlite3.connect(reference.dir / "graph.sqlite") as src,
        sqlite3.connect(dest / "graph.sqlite") as dst,
    ):
        src.backup(dst)
    return build_pipeline(dest / "pipeline.yaml")


def run_checks(bp: BuiltPipeline) -> dict[tuple[str, str], object]:
    """Execute the pipeline's integrity checks alone, through Dagster (every block)."""
    result = materialize(
        bp.assets + list(bp.built.asset_checks),
        selection=AssetSelection.checks(*bp.built.asset_checks),
        resources=bp.resources,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    return _evaluations(result)


# ----------------------------------------------------------------------------- correct run


def test_every_check_passes_on_a_correct_run(reference: Reference) -> None:
    assert set(reference.checks) == INTEGRITY | {("segments", "evaluation")}
    for key, evaluation in reference.checks.items():
        assert evaluation.passed, (key, evaluation.metadata)
    for name in ("fragment_ids_unique", "nodes_match_fragments", "segments_match_lut"):
        [evaluation] = [e for (_, n), e in reference.checks.items() if n == name]
        assert evaluation.metadata["blocks_checked"].value == 12
        assert evaluation.metadata["scope"].value == "every block"
    evaluation = reference.checks[("segments", "evaluation")]
    assert evaluation.metadata["voi"].value == pytest.approx(0.0, abs=1e-12)
    assert evaluation.metadata["are"].value == pytest.approx(0.0, abs=1e-12)
    assert evaluation.metadata["scope"].value == "whole volume"
    # Run on their own, the checks look at every block and pass too.
    assert all(e.passed for e in run_checks(reference.bp).values())


def test_checks_of_a_partial_run_look_at_its_partitions_only(
    reference: Reference, demo_volume: Path, tmp_path: Path
) -> None:
    bp = broken_copy(reference, demo_volume, tmp_path / "partial")
    keys = bp.partition_keys
    result = materialize(
        bp.assets + list(bp.built.asset_checks),
        selection=bp.keys("fragments", "fragment_nodes"),
        resources=bp.resources,
        instance=DagsterInstance.ephemeral(),
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[2], ASSET_PARTITION_RANGE_END_TAG: keys[4]},
    )
    checks = _evaluations(result)
    assert set(checks) == {
        ("fragments", "fragment_ids_unique"),
        ("fragment_nodes", "nodes_match_fragments"),
    }
    for evaluation in checks.values():
        assert evaluation.passed
        assert evaluation.metadata["blocks_checked"].value == 3
    grid = bp.built.pipeline.grid
    assert run_partition_keys({"dagster/partition": keys[5]}, grid) == [keys[5]]
    assert run_partition_keys({}, grid) == keys


# ----------------------------------------------------------------------------- broken stores


def test_a_duplicated_fragment_id_fails_fragment_ids_unique(
    reference: Reference, demo_volume: Path, tmp_path: Path
) -> None:
    bp = broken_copy(reference, demo_volume, tmp_path / "dup")
    pipeline = bp.built.pipeline
    grid = pipeline.grid
    # Block 1 gets a voxel labelled with one of block 0's fragment ids.
    id_of_block0 = int(pipeline.graph.store().block_nodes(0).ids[0])
    roi = grid.block(1).write_roi
    labels = pipeline.fragments.read(roi)
    labels[0, 0, 0] = id_of_block0
    pipeline.fragments.write(roi, labels)

    result = check_fragment_ids(pipeline, grid.partition_keys)
    assert not result.passed
    assert result.metadata["bad_blocks"] == 1
    problems = result.problems_markdown()
    assert grid.block(1).key in problems and f"owned by {grid.block(0).key}" in problems
    checks = run_checks(bp)
    assert not checks[("fragments", "fragment_ids_unique")].passed
    # The nodes no longer match the voxels of block 1 either.
    assert not checks[("fragment_nodes", "nodes_match_fragments")].passed


def test_a_missing_node_fails_nodes_match_fragments(
    reference: Reference, demo_volume: Path, tmp_path: Path
) -> None:
    bp = broken_copy(reference, demo_volume, tmp_path / "missing_node")
    pipeline = bp.built.pipeline
    victim = int(pipeline.graph.store().block_nodes(3).ids[-1])
    with sqlite3.connect(tmp_path / "missing_node" / "graph.sqlite") as db:
        assert db.execute("DELETE FROM nodes WHERE id = ?", (victim,)).rowcount == 1

    result = check_nodes_match_fragments(pipeline, pipeline.grid.partition_keys)
    assert not result.passed
    assert result.metadata["bad_blocks"] == 1
    assert f"fragments without a node (e.g. {victim})" in result.problems_markdown()
    checks = run_checks(bp)
    assert not checks[("fragment_nodes", "nodes_match_fragments")].passed
    assert checks[("fragments", "fragment_ids_unique")].passed
    # The LUT still covers every (remaining) node.
    assert checks[("lut", "lut_covers_fragments")].passed


def test_a_lut_missing_a_fragment_fails_lut_and_segment_checks(
    reference: Reference, demo_volume: Path, tmp_path: Path
) -> None:
    bp = broken_copy(reference, demo_volume, tmp_path / "lut")
    pipeline = bp.built.pipeline
    lut = pipeline.lut.load()
    # Drop a fragment that was merged into another one's segment (so relabelling changes).
    merged = np.flatnonzero(lut[0] != lut[1])[0]
    save_lut(pipeline.lut.path, np.delete(lut, merged, axis=1))

    result = check_lut_covers_fragments(pipeline)
    assert not result.passed and result.metadata["missing"] == 1
    assert str(int(lut[0, merged])) in result.problems_markdown()
    segments = check_segments_match_lut(pipeline, pipeline.grid.partition_keys)
    assert not segments.passed and segments.metadata["wrong_voxels"] > 0
    checks = run_checks(bp)
    assert not checks[("lut", "lut_covers_fragments")].passed
    assert not checks[("segments", "segments_match_lut")].passed
    assert checks[("fragments", "fragment_ids_unique")].passed


def test_a_wrong_segment_id_fails_segments_match_lut(
    reference: Reference, demo_volume: Path, tmp_path: Path
) -> None:
    bp = broken_copy(reference, demo_volume, tmp_path / "segments")
    pipeline = bp.built.pipeline
    roi = pipeline.grid.block(7).write_roi
    seg = pipeline.segments.read(roi)
    seg[2, 3, 4] += 1
    pipeline.segments.write(roi, seg)
    result = check_segments_match_lut(pipeline, pipeline.grid.partition_keys)
    assert not result.passed and result.metadata["wrong_voxels"] == 1
    assert pipeline.grid.block(7).key in result.problems_markdown()


def test_block_checks_sample_at_most_check_sample_blocks_and_rotate_by_run(
    reference: Reference, demo_volume: Path, tmp_path: Path
) -> None:
    from volara_assets.orchestration.checks import run_phase
    from volara_assets.runtime.bound import BoundPipeline

    bp = broken_copy(reference, demo_volume, tmp_path / "sampled")
    full = bp.built.pipeline
    pipeline = BoundPipeline(full.config.model_copy(update={"check_sample_blocks": 3}))
    grid = pipeline.grid
    assert grid.num_blocks == 12
    roi = grid.block(5).write_roi
    seg = pipeline.segments.read(roi)
    seg[0, 0, 0] += 1
    pipeline.segments.write(roi, seg)
    # One pick per stretch of 4 blocks; the phase says where in the stretch:
    # phase 0 checks blocks 0, 4, 8 and misses block 5, phase 0.25 checks 1, 5, 9.
    for phase, caught in ((0.0, False), (0.25, True), (0.5, False)):
        result = check_segments_match_lut(pipeline, grid.partition_keys, phase)
        assert result.passed is not caught, phase
        assert result.metadata["blocks_checked"] == 3
        assert result.metadata["blocks_in_run"] == 12
        assert result.metadata["scope"] == "sampled blocks of the volume"
    # Run ids spread the phase over [0, 1): four runs, four different samples.
    phases = {run_phase(f"{i:08x}-0000") for i in (0, 2**30, 2**31, 3 * 2**30)}
    assert phases == {0.0, 0.25, 0.5, 0.75}
    # The default (16, more than the 12 blocks) checks every block.
    every = check_segments_match_lut(full, grid.partition_keys)
    assert not every.passed and every.metadata["wrong_voxels"] == 1
    assert full.config.check_sample_blocks == 16


def test_evaluation_warns_above_its_thresholds_and_samples_large_volumes(
    reference: Reference,
) -> None:
    pipeline = reference.bp.built.pipeline
    ok = check_evaluation(pipeline, warn_voi=0.5, warn_are=0.3, sample_blocks=64)
    assert ok.passed and ok.warn_only
    strict = check_evaluation(pipeline, warn_voi=-1.0, warn_are=0.3, sample_blocks=0)
    assert not strict.passed and strict.warn_only
    assert "VOI" in strict.description
    sampled = check_evaluation(pipeline, warn_voi=0.5, warn_are=0.3, sample_blocks=3)
    assert sampled.metadata["scope"] == "sampled blocks"
    assert sampled.metadata["blocks_evaluated"] == 3


# ----------------------------------------------------------------------------- pictures


def decode_png(data: bytes) -> np.ndarray:
    """A minimal decoder for the PNGs ``encode_png`` writes (RGB8, filter 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body)
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def png_in(markdown: str) -> np.ndarray:
    match = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:200]
    return decode_png(base64.b64decode(match.group(1)))


def test_png_encoder_and_label_colours() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)
    colors = label_colors(np.array([[0, 1, 2], [2, 1, 0]], np.uint64))
    assert (colors[0, 0] == 0).all() and (colors[1, 2] == 0).all()
    np.testing.assert_array_equal(colors[0, 1], colors[1, 1])
    assert not np.array_equal(colors[0, 1], colors[0, 2])
    assert (colors[0, 1:] > 0).any(axis=-1).all()
    histogram = decode_png(histogram_image(np.array([1, 2, 2, 50, 1000])))
    assert histogram.shape == (120, 240, 3) and (histogram != 255).any()


def test_every_partition_materialization_carries_its_middle_slice(reference: Reference) -> None:
    bp, instance = reference.bp, reference.instance
    pipeline = bp.built.pipeline
    for name, handle in (("fragments", pipeline.fragments), ("segments", pipeline.segments)):
        records = instance.fetch_materializations(bp.key(name), limit=100).records
        assert sorted(r.partition_key for r in records) == bp.partition_keys
        for record in records:
            markdown = record.asset_materialization.metadata["preview"].value
            image = png_in(markdown)
            # Blocks are (8, 32, 32): the middle z-slice, scaled up to 160 x 160.
            assert image.shape == (160, 160, 3)
            [block] = pipeline.grid.partition_blocks(record.partition_key)
            roi = block.write_roi
            section = handle.read(roi)[roi.shape[0] // 2]
            expected = np.repeat(np.repeat(label_colors(section), 5, axis=0), 5, axis=1)
            np.testing.assert_array_equal(image, expected)
    [lut] = instance.fetch_materializations(bp.key("lut"), limit=1).records
    metadata = lut.asset_materialization.metadata
    assert metadata["segments"].value == len(np.unique(pipeline.lut.load()[1]))
    assert metadata["fragments"].value == pipeline.lut.load().shape[1]
    assert png_in(metadata["segment_sizes"].value).shape == (120, 240, 3)
