"""The tutorial front door: volara's tutorial API on Dagster assets, and its example script."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from dagster import AssetKey, DagsterInstance, Definitions

from volara_assets.blockwise import (
    AffAgglom,
    BlockwiseError,
    ExtractFrags,
    GraphMWS,
    Pipeline,
    Relabel,
    dagster_home,
)
from volara_assets.blockwise.record import pipeline_name, read_array_record, read_db_record
from volara_assets.config import PipelineConfig
from volara_assets.datasets import Affs, Labels
from volara_assets.dbs import SQLite
from volara_assets.demo import write_demo
from volara_assets.lut import LUT
from volara_assets.storage.lut import load_lut

REPO = Path(__file__).resolve().parent.parent
NHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
SHAPE = (24, 64, 64)
BLOCK = (12, 32, 32)  # 2 x 2 x 2 = 8 blocks
CONTEXT = (2, 2, 2)
ASSETS = ("fragments", "fragment_nodes", "edges", "lut", "segments")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tutorial_volume") / "demo.zarr"
    write_demo(path, shape=SHAPE, seed=0, chunks=(8, 32, 32))
    return path


@dataclass
class TutorialRun:
    """``examples/tutorial.py`` running in a subprocess in a fresh working directory."""

    process: subprocess.Popen
    cwd: Path
    xdg: Path
    stdout: Path
    stderr: Path


@pytest.fixture(scope="module", autouse=True)
def tutorial_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TutorialRun]:
    """Started before this module's first test, checked by the last: it runs meanwhile."""
    root = tmp_path_factory.mktemp("tutorial_run")
    cwd, xdg = root / "cwd", root / "xdg"
    cwd.mkdir()
    env = dict(os.environ, XDG_DATA_HOME=str(xdg), VOLARA_TUTORIAL_SHAPE="40,128,128")
    env["VOLARA_TUTORIAL_KEEP"] = "1"
    env.pop("DAGSTER_HOME", None)  # the default instance: under XDG_DATA_HOME, not the cwd
    stdout, stderr = root / "stdout.txt", root / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "tutorial.py")],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
        )
    yield TutorialRun(process, cwd, xdg, stdout, stderr)
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(autouse=True)
def dagster_home_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def tutorial_steps(
    volume: Path, out: Path, affs: str = "affs", block_size=BLOCK, **options: int
) -> tuple[ExtractFrags, AffAgglom, GraphMWS, Relabel]:
    """The tutorial's four steps, writing under ``out``; ``options`` go to every step."""
    db = SQLite(path=out / "db.sqlite", edge_attrs={"zyx_aff": "float"})
    affinities = Affs(store=volume / affs, neighborhood=NHOOD)
    fragments = Labels(store=out / "out.zarr" / "fragments")
    lut = LUT(path=out / "out.zarr" / "lut")
    extract = ExtractFrags(
        db=db,
        affs_data=affinities,
        frags_data=fragments,
        block_size=block_size,
        context=CONTEXT,
        bias=[-0.5, -0.5, -0.5],
        **options,
    )
    agglom = AffAgglom(
        db=db,
        affs_data=affinities,
        frags_data=fragments,
        block_size=block_size,
        context=CONTEXT,
        scores={"zyx_aff": affinities.neighborhood},
        **options,
    )
    roi = affinities.array("r").roi
    mws = GraphMWS(db=db, roi=(roi.offset, roi.shape), lut=lut, weights={"zyx_aff": (1.0, -0.5)})
    relabel = Relabel(
        frags_data=fragments,
        seg_data=Labels(store=out / "out.zarr" / "segments"),
        lut=lut,
        block_size=block_size,
        **options,
    )
    return extract, agglom, mws, relabel


def outputs(out: Path) -> dict[str, object]:
    """Everything the pipeline wrote under ``out``."""
    db = SQLite(path=out / "db.sqlite").open("r")
    nodes, edges = db.read_nodes(), db.read_edges()
    result: dict[str, object] = {
        "fragments": zarr.open_array(out / "out.zarr" / "fragments", mode="r")[:],
        "node_ids": nodes.ids,
        "node_count": db.count_nodes(),
        "edge_pairs": np.stack([edges.u, edges.v]),
        "edge_scores": edges.scores["zyx_aff"],
        "edge_count": db.count_edges(),
    }
    if (out / "out.zarr" / "lut.npz").exists():
        result["lut"] = load_lut(out / "out.zarr" / "lut.npz")
    if (out / "out.zarr" / "segments").exists():
        result["segments"] = zarr.open_array(out / "out.zarr" / "segments", mode="r")[:]
    return result


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_chain_runs_serially_and_in_processes_identically(volume: Path, tmp_path: Path) -> None:
    """``a + b + c + d`` is one Dagster run over one pipeline; processes give the same data."""
    results = {}
    for mode, multiprocessing in (("serial", False), ("processes", True)):
        out = tmp_path / mode
        options = {"num_workers": 2} if multiprocessing else {}
        extract, agglom, mws, relabel = tutorial_steps(volume, out, "affs_noisy", **options)
        pipeline = extract + agglom + mws + relabel
        assert isinstance(pipeline, Pipeline)
        config = pipeline.config()
        assert isinstance(config, PipelineConfig)
        assert config.name == pipeline_name(out / "out.zarr" / "fragments")
        assert config.score_groups == {"zyx_aff": NHOOD}
        assert config.lut is not None and config.lut.weights == {"zyx_aff": (1.0, -0.5)}
        result = pipeline.run_blockwise(multiprocessing=multiprocessing)
        materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        assert materialized == set(ASSETS)
        executor = "processes x2" if multiprocessing else "serial x1"
        logs = DagsterInstance.get().all_logs(result.run_id)
        assert any(f"on {executor}" in (entry.user_message or "") for entry in logs)
        # The record every later step reads: on the fragments array and in the db.
        assert read_array_record(out / "out.zarr" / "fragments") == config
        assert read_db_record(f"sqlite:///{out / 'db.sqlite'}") == config
        results[mode] = outputs(out)

    serial = results["serial"]
    assert_same(serial, results["processes"])
    assert serial["node_count"] == len(np.unique(serial["node_ids"])) > 8
    assert serial["edge_count"] > 0
    # Noisy affinities: the LUT merges fragments, so segments are fewer than fragments.
    segments = np.unique(serial["segments"][serial["segments"] != 0])
    assert 0 < len(segments) < serial["node_count"]


def test_steps_share_one_config_and_the_asset_factory(volume: Path, tmp_path: Path) -> None:
    extract, agglom, mws, relabel = tutorial_steps(volume, tmp_path)
    defs = (extract + agglom).to_definitions()
    assert isinstance(defs, Definitions)
    name = pipeline_name(tmp_path / "out.zarr" / "fragments")
    keys = set(defs.resolve_asset_graph().get_all_asset_keys())
    assert {AssetKey([name, a]) for a in (*ASSETS, "affinities")} <= keys
    # The step config is the YAML config: it round-trips through YAML unchanged.
    config = extract.config()
    assert PipelineConfig.model_validate(yaml.safe_load(config.to_yaml())) == config
    assert config.fragments is not None and config.fragments.bias == [-0.5, -0.5, -0.5]
    assert config.lut is None and config.segments_array is None


def test_each_step_twice_is_safe_and_extract_frags_sees_new_affinities(
    tmp_path: Path, volume: Path
) -> None:
    import shutil

    data = tmp_path / "input.zarr"
    shutil.copytree(volume, data)
    out = tmp_path / "out"
    steps = tutorial_steps(data, out, block_size=(12, 32, 64))  # 2 x 2 x 1 blocks
    (steps[0] + steps[1] + steps[2] + steps[3]).run_blockwise()
    first = outputs(out)
    assert first["node_count"] == len(np.unique(first["node_ids"])) > 4
    for step in steps:  # each step a second time: same arrays, same rows, no duplicates
        step.run_blockwise()
        again = outputs(out)
        assert_same(first, again)
        assert again["edge_count"] == len(np.unique(again["edge_pairs"], axis=1).T)

    # Cut every cell in two along the plane between z = 5 and 6 (inside the first
    # z-block), then rerun only ExtractFrags: fragments and nodes follow the new input.
    affs = zarr.open_array(data / "affs", mode="r+")
    affs[0, 5] = 0
    steps[0].run_blockwise()
    after = outputs(out)
    assert not np.array_equal(after["fragments"], first["fragments"])
    assert after["node_count"] > first["node_count"]
    frags = after["fragments"]
    assert not np.intersect1d(np.unique(frags[5]), np.unique(frags[6])).any()

    # ... and they equal a fresh pipeline's on the new affinities.
    fresh = tmp_path / "fresh"
    tutorial_steps(data, fresh, block_size=(12, 32, 64))[0].run_blockwise()
    fresh_out = outputs(fresh)
    np.testing.assert_array_equal(after["fragments"], fresh_out["fragments"])
    np.testing.assert_array_equal(after["node_ids"], fresh_out["node_ids"])


def test_missing_prerequisites_are_named(volume: Path, tmp_path: Path) -> None:
    extract, agglom, mws, relabel = tutorial_steps(volume, tmp_path)
    with pytest.raises(ValueError, match=r"GraphMWS: the db .* no pipeline record.*ExtractFrags"):
        mws.run_blockwise()
    with pytest.raises(ValueError, match=r"Relabel: the fragments array .* no pipeline record"):
        relabel.run_blockwise()
    with pytest.raises(ValueError, match=r"AffAgglom: the fragments array .* no pipeline record"):
        agglom.run_blockwise()
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "db.sqlite").exists()

    extract.run_blockwise()
    with pytest.raises(ValueError, match=r"needs edges \(8 of 8 blocks missing; run AffAgglom\)"):
        mws.run_blockwise()
    with pytest.raises(ValueError, match=r"needs lut \(never materialized; run GraphMWS\)"):
        relabel.run_blockwise()
    wrong_grid = relabel.model_copy(update={"block_size": (8, 16, 16)})
    with pytest.raises(ValueError, match=r"Relabel.block_size: \(8, 16, 16\) differs"):
        wrong_grid.run_blockwise()
    with pytest.raises(ValueError, match=r"GraphMWS.roi: .* lies outside the volume"):
        mws.model_copy(update={"roi": ((24 * 290, 0, 0), (290, 260, 260))}).run_blockwise()
    with pytest.raises(ValueError, match=r"Relabel.roi: offset .* multiples of voxel_size"):
        relabel.model_copy(update={"roi": ((0, 0, 100), (290, 260, 260))}).run_blockwise()
    with pytest.raises(ValueError, match=r"neighborhood: required"):
        Affs(store=volume / "affs")


def test_sub_volume_runs_complete_the_volume_like_one_whole_run(
    volume: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chained runs over two rois (z blocks 0-1, then 2) equal one whole-volume run."""
    block = (8, 32, 32)  # a (3, 2, 2) grid: keys z{0,1,2}_y{0,1}_x{0,1}
    whole = tmp_path / "whole"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home_whole"))
    steps = tutorial_steps(volume, whole, block_size=block)
    Pipeline(list(steps)).run_blockwise()

    part = tmp_path / "part"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home_part"))
    lower = ((0, 0, 0), (16 * 290, 64 * 260, 64 * 260))  # z voxels 0-15: z blocks 0 and 1
    upper = ((16 * 290, 0, 0), (8 * 290, 64 * 260, 64 * 260))
    steps = tutorial_steps(volume, part, block_size=block)
    Pipeline([s.model_copy(update={"roi": lower}) for s in steps]).run_blockwise()

    key = f"{pipeline_name(str(part / 'out.zarr' / 'fragments'))}"
    z0 = {f"z0_y{y}_x{x}" for y in (0, 1) for x in (0, 1)}
    z1 = {k.replace("z0", "z1") for k in z0}
    with DagsterInstance.get() as instance:
        done = {a: instance.get_materialized_partitions(AssetKey([key, a])) for a in ASSETS}
    assert done["fragments"] == done["fragment_nodes"] == z0 | z1
    # z1's edges wait for z2's fragments (their neighbours); z0's have all theirs.
    assert done["edges"] == z0
    assert done["segments"] == z0 | z1
    first = outputs(part)
    assert not first["fragments"][16:].any(), "the second roi's blocks were written"
    assert first["fragments"][:16].any()

    Pipeline([s.model_copy(update={"roi": upper}) for s in steps]).run_blockwise()
    with DagsterInstance.get() as instance:
        for a in ("fragments", "edges", "segments"):
            assert len(instance.get_materialized_partitions(AssetKey([key, a]))) == 12, a
    assert_same(outputs(part), outputs(whole))


def test_a_failed_block_raises(volume: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "input.zarr"
    shutil.copytree(volume, data)
    # Garble one chunk of the affinities: the blocks reading it fail, the others finish.
    chunk = next(p for p in sorted((data / "affs" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(b"not a chunk")
    extract = tutorial_steps(data, tmp_path / "out")[0]
    with pytest.raises(BlockwiseError, match=r"blocks failed"):
        extract.run_blockwise()


def test_instance_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "mine"))
    assert dagster_home() == tmp_path / "mine"
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert dagster_home() == tmp_path / "xdg" / "volara_assets" / "dagster_home"


def test_datasets_and_db_read_like_volara(volume: Path, tmp_path: Path) -> None:
    from funlib.geometry import Roi

    affs = Affs(store=volume / "affs", neighborhood=NHOOD).array("r")
    assert affs.roi.offset == (0, 0, 0)
    assert affs.roi.shape == (24 * 290, 64 * 260, 64 * 260)
    assert affs[:, 3].shape == (3, 64, 64) and affs.dtype == np.uint8

    # A db declared without edge_attrs (volara reads them from an existing db): the
    # edge table ExtractFrags made gets AffAgglom's score names.
    undeclared = SQLite(path=tmp_path / "db.sqlite")
    extract, agglom = tutorial_steps(volume, tmp_path)[:2]
    extract.model_copy(update={"db": undeclared}).run_blockwise()
    agglom.model_copy(update={"db": undeclared}).run_blockwise()
    db = undeclared.open("r")
    assert db.store.edge_attrs == {"zyx_aff": "float"}
    graph = db.read_graph(Roi(*affs.roi))  # a funlib Roi, as the tutorial passes
    assert graph.number_of_nodes() == db.count_nodes()
    assert db.read_graph(affs.roi).number_of_nodes() == db.count_nodes()
    _, data = next(iter(graph.nodes(data=True)))
    assert set(data) == {"position", "size"}
    assert graph.number_of_edges() == db.count_edges() > 0
    assert all(set(d) == {"zyx_aff"} for *_, d in graph.edges(data=True))
    # The nodes whose centroid lies in the ROI (plus, bare, the far ends of their edges).
    half = db.read_graph(((0, 0, 0), (8 * 290, 64 * 260, 64 * 260)))
    inside = [d["position"] for _, d in half.nodes(data=True) if d]
    assert 0 < len(inside) < graph.number_of_nodes()
    assert all(p[0] < 8 * 290 for p in inside)
    assert len(inside) == sum(p[0] < 8 * 290 for _, p in graph.nodes(data="position"))


def test_example_is_the_tutorial_and_segments_perfectly(tutorial_run: TutorialRun) -> None:
    """examples/tutorial.py runs unchanged in a fresh folder; 0 merges, 0 splits, accuracy 1.0."""
    script = REPO / "examples" / "tutorial.py"
    imported = {
        node.module
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    assert {
        "volara_assets.blockwise",
        "volara_assets.datasets",
        "volara_assets.dbs",
        "volara_assets.lut",
        "volara_assets.tmp",
    } <= imported
    assert not any(m.split(".")[0] == "volara" for m in imported)

    cwd, xdg = tutorial_run.cwd, tutorial_run.xdg
    returncode = tutorial_run.process.wait(timeout=300)
    out = tutorial_run.stdout.read_text()
    assert returncode == 0, tutorial_run.stderr.read_text()[-3000:]

    def number(label: str) -> int:
        return int(re.search(rf"^{re.escape(label)}: (\d+)$", out, re.M).group(1))

    fragments = number("Number of fragments generated")
    assert fragments > 100  # the print of fragments [100:105] shows 5 of them
    assert number("Number of edges in our fragment graph") == 0  # before AffAgglom
    assert number("Number of fragments") == fragments
    assert number("Number of edges") > fragments // 2
    assert re.search(r"^\s*'size': \d+\}\)", out, re.M)  # pprint of sample nodes
    assert "{'zyx_aff': 1.0})" in out and "{'zyx_aff': 0.0})" in out  # sample edges
    assert "False merges:  0\n" in out
    assert "False splits:  0\n" in out
    assert "Accuracy:  1.0\n" in out
    assert "Falsely" not in out

    # No log or instance folders in the working directory: only the tutorial's data.
    assert sorted(p.name for p in cwd.iterdir()) == ["cells3d.zarr"]
    home = xdg / "volara_assets" / "dagster_home"
    assert (home / "dagster.yaml").read_text().strip().endswith("enabled: false")

    # The whole volume (not only slice 30) is segmented perfectly: a bijection to the labels.
    data = cwd / "cells3d.zarr"
    seg = zarr.open_array(data / "segments", mode="r")[:]
    labels = zarr.open_array(data / "labels", mode="r")[:]
    pairs = np.unique(np.stack([seg.ravel(), labels.ravel().astype(np.uint64)]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()

    # Four steps, one pipeline: every asset of it has a materialization in the instance,
    # one run per step.
    name = pipeline_name(data / "fragments")
    instance = DagsterInstance.from_config(str(home))
    for asset in ASSETS:
        assert instance.get_latest_materialization_event(AssetKey([name, asset])) is not None
    assert len(instance.get_runs()) == 4
