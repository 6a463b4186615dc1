"""The four steps blockwise, without Dagster, on the default demo volume (issue: core).

Tutorial parameters: block (20, 100, 100), context (2, 2, 2), bias -0.5 per
offset, one score group over the 3 offsets, weights (1.0, -0.5).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from volara_assets.config import PipelineConfig
from volara_assets.demo import write_demo
from volara_assets.ops.agglomerate import agglomerate
from volara_assets.ops.metrics import evaluate
from volara_assets.runtime.bound import BoundPipeline
from volara_assets.runtime.jobs import EdgesJob, FragmentsJob, SegmentsJob
from volara_assets.storage.lut import save_lut

HOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blocks") / "demo.zarr"
    write_demo(path, shape=(60, 256, 256), seed=0)
    return path


def make_pipeline(volume: Path, out: Path, affinities: str = "affs") -> BoundPipeline:
    config = PipelineConfig.model_validate(
        dict(
            name="blocks",
            affinities=str(volume / affinities),
            neighborhood=HOOD,
            ground_truth=str(volume / "labels"),
            fragments_array=str(out / "out.zarr" / "fragments"),
            segments_array=str(out / "out.zarr" / "segments"),
            lut_path=str(out / "lut.npz"),
            db_url=f"sqlite:///{out / 'db.sqlite'}",
            block_size=[20, 100, 100],
            context=[2, 2, 2],
            fragments={"bias": [-0.5, -0.5, -0.5]},
            edges={"scores": {"zyx_aff": HOOD}},
            lut={"weights": {"zyx_aff": [1.0, -0.5]}},
        )
    )
    pipeline = BoundPipeline(config)
    pipeline.prepare_outputs()
    return pipeline


def run(pipeline: BoundPipeline, order: list[int], repeat: set[int] = frozenset()) -> None:
    c, g = pipeline.config, pipeline.grid
    frags = FragmentsJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph)
    edges = EdgesJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph)
    for job in (frags, edges):
        for i in order:
            job(i)
            if i in repeat:
                job(i)
    store = pipeline.graph.store()
    lut = agglomerate(store.read_nodes().ids, store.read_edges(), c.lut.weights)
    save_lut(pipeline.lut.path, lut)
    seg = SegmentsJob(g, pipeline.fragments, pipeline.segments, pipeline.lut)
    for i in order:
        seg(i)


@pytest.fixture(scope="module")
def reference(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> BoundPipeline:
    pipeline = make_pipeline(volume, tmp_path_factory.mktemp("ref"))
    run(pipeline, list(range(pipeline.grid.num_blocks)))
    return pipeline


@pytest.mark.parametrize("affinities", ["affs", "affs_noisy"])
def test_streamed_lut_equals_the_in_memory_lut_on_the_demo_volume(
    volume: Path, reference: BoundPipeline, tmp_path: Path, affinities: str
):
    from volara_assets.ops.agglomerate import agglomerate_stream

    if affinities == "affs":
        pipeline = reference
    else:  # noisy: far more repulsive edges and mutex decisions
        pipeline = make_pipeline(volume, tmp_path, affinities)
        c, g = pipeline.config, pipeline.grid
        for job in (
            FragmentsJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph),
            EdgesJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph),
        ):
            for i in range(g.num_blocks):
                job(i)
    store = pipeline.graph.store()
    weights = pipeline.config.lut.weights
    expected = agglomerate(store.read_nodes().ids, store.read_edges(), weights)
    streamed = agglomerate_stream(
        store.graph_node_ids(), store.edges_by_score(weights, chunk_size=1000)
    )
    np.testing.assert_array_equal(streamed, expected)
    assert store.count_edges() > 1000  # several chunks
    assert 0 < len(np.unique(expected[1])) < expected.shape[1]


def test_perfect_affinities_reproduce_the_ground_truth(reference: BoundPipeline):
    roi = reference.grid.volume_roi
    seg = reference.segments.read(roi)
    gt = reference.ground_truth.read(roi)
    scores = evaluate(seg, gt)
    assert scores["voi_split"] == pytest.approx(0, abs=1e-12)
    assert scores["voi_merge"] == pytest.approx(0, abs=1e-12)
    assert scores["are"] == pytest.approx(0, abs=1e-12)
    # background stays background, and segments <-> labels is a bijection
    assert np.array_equal(seg == 0, gt == 0)
    pairs = np.unique(np.stack([seg[gt > 0], gt[gt > 0].astype(np.uint64)]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_fragment_ids_encode_their_block(reference: BoundPipeline):
    g = reference.grid
    frags = reference.fragments.read(g.volume_roi)
    for block in g.blocks():
        ids = np.unique(frags[block.write_roi.slices])
        ids = ids[ids != 0]
        assert np.all(g.block_of_fragment(ids) == block.index)
    nodes = reference.graph.store().read_nodes()
    assert set(nodes.ids.tolist()) == set(np.unique(frags[frags != 0]).tolist())
    assert nodes.sizes.sum() == np.count_nonzero(frags)


def test_any_order_and_repeated_blocks_give_identical_results(
    volume: Path, reference: BoundPipeline, tmp_path: Path
):
    other = make_pipeline(volume, tmp_path)
    order = list(range(other.grid.num_blocks))
    random.Random(7).shuffle(order)
    run(other, order, repeat=set(order[:5]))
    roi = other.grid.volume_roi
    for name in ("fragments", "segments"):
        assert np.array_equal(getattr(other, name).read(roi), getattr(reference, name).read(roi)), (
            name
        )
    a, b = other.graph.store(), reference.graph.store()
    na, nb = a.read_nodes(), b.read_nodes()
    assert np.array_equal(na.ids, nb.ids) and np.array_equal(na.sizes, nb.sizes)
    assert np.array_equal(na.positions, nb.positions)
    ea, eb = a.read_edges(), b.read_edges()
    assert np.array_equal(ea.u, eb.u) and np.array_equal(ea.v, eb.v)
    assert np.array_equal(ea.scores["zyx_aff"], eb.scores["zyx_aff"], equal_nan=True)
    assert a.count_nodes() == len(na) and a.count_edges() == len(ea)


def test_blockwise_edges_equal_one_pass_over_the_whole_volume(reference: BoundPipeline):
    """Each block reads only its write ROI and forward slabs, yet the edges are exact."""
    from volara_assets.ops.edges import edge_scores

    roi = reference.grid.volume_roi
    whole = edge_scores(
        reference.fragments.read(roi),
        reference.affinities.read(roi),
        HOOD,
        reference.config.score_groups,
    )
    stored = reference.graph.store().read_edges()
    assert len(stored) == len(whole) > 1000
    assert np.array_equal(stored.u, whole.u) and np.array_equal(stored.v, whole.v)
    # bitwise: the same pairs are pooled in the same order
    assert np.array_equal(stored.scores["zyx_aff"], whole.scores["zyx_aff"], equal_nan=True)


@pytest.mark.parametrize(
    "extra",
    [
        [[0, 0, 3], [2, 0, 0]],  # long-range, axis-aligned: slabs of 3 (x) and 2 (z) voxels
        [[0, 0, 3], [0, 2, 2]],  # long-range and diagonal: the job reads the whole forward box
        [[0, 0, 3], [0, -2, 2]],  # a negative component: the job reads the full context
    ],
    ids=["axis-aligned", "diagonal", "negative"],
)
def test_long_range_and_diagonal_offsets_give_exact_edges(tmp_path: Path, extra):
    from volara_assets.ops.edges import edge_scores
    from volara_assets.storage.arrays import create_array

    hood = HOOD + extra
    rng = np.random.default_rng(3)
    affs = create_array(
        tmp_path / "in.zarr" / "affs", (12, 40, 40), np.uint8, offset=(0, 0, 0),
        voxel_size=(1, 1, 1), chunks=(6, 20, 20), num_channels=len(hood),
    )
    data = rng.integers(0, 256, size=(len(hood), 12, 40, 40), dtype=np.uint8)
    affs.write(affs.grid((6, 20, 20)).volume_roi, data)
    # Fragments come from the direct offsets only (mwatershed takes no negative offset).
    config = PipelineConfig.model_validate(
        dict(
            name="edges",
            affinities=str(tmp_path / "in.zarr" / "affs"),
            neighborhood=hood,
            fragments_array=str(tmp_path / "out.zarr" / "fragments"),
            db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
            block_size=[6, 20, 20],
            context=[3, 3, 3],
            fragments={"bias": [-0.3, -0.3, -0.3] + [-0.9] * len(extra)},
            edges={"scores": {"direct": HOOD, "long": extra}},
        )
    )
    pipeline = BoundPipeline(config)
    pipeline.prepare_outputs()
    c, g = config, pipeline.grid
    frag_config = config.model_copy(
        update={
            "neighborhood": HOOD,
            "fragments": config.fragments.model_copy(update={"bias": [-0.3, -0.3, -0.3]}),
        }
    )
    direct = type(pipeline.affinities)(str(tmp_path / "in.zarr" / "direct"))
    direct_array = create_array(
        direct.path, (12, 40, 40), np.uint8, offset=(0, 0, 0), voxel_size=(1, 1, 1),
        chunks=(6, 20, 20), num_channels=3,
    )
    direct_array.write(g.volume_roi, data[:3])
    frags = FragmentsJob(frag_config, g, direct, pipeline.fragments, pipeline.graph)
    edges = EdgesJob(c, g, pipeline.affinities, pipeline.fragments, pipeline.graph)
    for i in range(g.num_blocks):
        frags(i)
    for i in range(g.num_blocks):
        edges(i)
    whole = edge_scores(pipeline.fragments.read(g.volume_roi), data, hood, c.score_groups)
    stored = pipeline.graph.store().read_edges()
    assert len(stored) == len(whole) > 100
    assert np.array_equal(stored.u, whole.u) and np.array_equal(stored.v, whole.v)
    for name in ("direct", "long"):
        assert np.array_equal(stored.scores[name], whole.scores[name], equal_nan=True), name
