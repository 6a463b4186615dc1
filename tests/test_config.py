"""Pipeline config: validation errors name the field and what was expected."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from volara_assets.config import PipelineConfig

BASE = dict(
    name="p",
    affinities="in.zarr/affs",
    neighborhood=[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    fragments_array="out.zarr/fragments",
    segments_array="out.zarr/segments",
    lut_path="out.zarr/lut",
    db_url="sqlite:///out.zarr/db.sqlite",
    block_size=[20, 100, 100],
    context=[2, 2, 2],
    fragments={"bias": [-0.5, -0.5, -0.5]},
    edges={"scores": {"zyx_aff": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}},
    lut={"weights": {"zyx_aff": [1.0, -0.5]}},
)


def make(**changes):
    return PipelineConfig.model_validate({**BASE, **changes})


def test_blocks_per_partition_defaults_to_auto_and_keeps_explicit_bricks(tmp_path: Path):
    assert make().blocks_per_partition == "auto"
    assert make(blocks_per_partition=[2, 1, 4]).blocks_per_partition == (2, 1, 4)
    path = tmp_path / "p.yaml"
    make(blocks_per_partition="auto").to_yaml(path)
    assert "blocks_per_partition: auto" in path.read_text()
    assert PipelineConfig.from_yaml(path).blocks_per_partition == "auto"
    with pytest.raises(ValidationError, match="blocks_per_partition"):
        make(blocks_per_partition="big")


def test_valid_config_derives_score_groups_and_lut_suffix():
    config = make()
    assert config.score_groups == {"zyx_aff": [(1, 0, 0), (0, 1, 0), (0, 0, 1)]}
    assert config.lut_path == "out.zarr/lut.npz"
    assert config.edge_attrs == {"zyx_aff": "float"}


def test_default_score_group_covers_the_neighborhood():
    config = make(edges={}, lut={"weights": {"aff": [1.0, -0.5]}})
    assert config.score_groups == {"aff": [(1, 0, 0), (0, 1, 0), (0, 0, 1)]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fragments": {"bias": [-0.5, -0.5]}}, "fragments.bias: expected 3 values"),
        ({"lut": {"weights": {"xy_aff": [1.0, -0.5]}}}, "unknown edge attribute 'xy_aff'"),
        ({"context": [0, 2, 2]}, "smaller than the largest neighborhood offset"),
        ({"context": [30, 2, 2]}, "must be <= block_size"),
        (
            {"edges": {"scores": {"z": [[2, 0, 0]]}}, "lut": {"weights": {"z": [1, 0]}}},
            "offset (2, 0, 0) is not in the neighborhood",
        ),
        ({"edges": {"scores": {"bad name": [[1, 0, 0]]}}}, "must be a plain identifier"),
        ({"name": "demo; drop"}, "must be a plain identifier"),
        ({"block_size": [0, 100, 100]}, "block_size"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_config_names_the_field(changes, message):
    with pytest.raises(ValidationError) as info:
        make(**changes)
    assert message in str(info.value)


def test_yaml_round_trip_resolves_relative_paths(tmp_path: Path):
    path = tmp_path / "sub" / "p.yaml"
    path.parent.mkdir()
    make().to_yaml(path)
    loaded = PipelineConfig.from_yaml(path)
    assert loaded.affinities == str(tmp_path / "sub" / "in.zarr" / "affs")
    assert loaded.db_url == "sqlite:///" + str(tmp_path / "sub" / "out.zarr" / "db.sqlite")
    assert loaded.fragments == make().fragments


def test_fragments_engine_defaults_to_numba_and_is_checked():
    assert make().fragments.engine == "numba"
    assert make(fragments={"bias": [-0.5] * 3, "engine": "mwatershed"}).fragments.engine == (
        "mwatershed"
    )
    with pytest.raises(ValidationError, match="engine"):
        make(fragments={"bias": [-0.5] * 3, "engine": "affogato"})
