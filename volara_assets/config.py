"""Pydantic models of a pipeline: inputs, outputs, database, block grid and step parameters."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .geometry import Offset, check_context

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Fields naming data the pipeline reads; never written.
INPUT_FIELDS = ("affinities", "mask", "ground_truth")
#: Fields naming data the pipeline writes (the SQLite file of ``db_url`` too, see ``output_paths``).
OUTPUT_FIELDS = ("fragments_array", "segments_array", "lut_path")


def sqlite_file(db_url: str) -> str | None:
    """The file of a ``sqlite://`` URL; ``None`` for other backends and in-memory databases."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _clash(a: str, b: str) -> str | None:
    """How path ``a`` clashes with path ``b``: ``"is"``, ``"lies inside"``, ``"contains"``,
    or ``None`` when they are apart."""
    pa, pb = Path(os.path.normpath(a)).parts, Path(os.path.normpath(b)).parts
    n = min(len(pa), len(pb))
    if pa[:n] != pb[:n]:
        return None
    return "is" if len(pa) == len(pb) else "lies inside" if len(pa) > len(pb) else "contains"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FragmentsConfig(_Model):
    """Fragment extraction: mutex watershed per block (volara's ExtractFrags)."""

    bias: list[float]
    sigma: tuple[float, float, float] | None = None
    noise_eps: float | None = None
    strides: list[Offset] | None = None
    randomized_strides: bool = False
    filter_fragments: float = 0.0
    remove_debris: int = Field(0, ge=0)
    node_attrs: dict[str, str] = Field(default_factory=dict)
    # The mutex watershed kernel: ours (numba), or mwatershed for fragments
    # identical to volara's (see ops.fragments.extract_fragments).
    engine: Literal["numba", "mwatershed"] = "numba"


class EdgesConfig(_Model):
    """Edge scoring: one pooled mean affinity per score group (volara's AffAgglom)."""

    scores: dict[str, list[Offset]] | None = None

    @field_validator("scores")
    @classmethod
    def _names(cls, scores: dict[str, list[Offset]] | None) -> dict[str, list[Offset]] | None:
        for name, offsets in (scores or {}).items():
            if not IDENTIFIER.match(name):
                raise ValueError(
                    f"edges.scores: score name {name!r} must be a plain identifier "
                    "(letters, digits, underscore; not starting with a digit)"
                )
            if not offsets:
                raise ValueError(f"edges.scores.{name}: expected at least one offset")
        return scores


class LutConfig(_Model):
    """Global agglomeration of the fragment graph (volara's GraphMWS)."""

    weights: dict[str, tuple[float, float]]
    edge_per_attr: bool = True


class ExecutorConfig(_Model):
    """How the blocks of one step are run: in this process, a process pool, or Dask."""

    kind: Literal["serial", "processes", "dask"] = "serial"
    num_workers: int = Field(1, ge=1)
    dask_address: str | None = None


class AutomationConfig(_Model):
    """Unattended operation: the input sensor, the re-observation schedule, declarative automation.

    The input sensor observes the affinities when they appear or change; the
    automation sensor then materializes the stale partitions (fragments, edges),
    the LUT and the segments. Intervals are in seconds; ``observe_cron`` is a cron
    string. ``*_running`` is the status the sensor or schedule starts with (the
    UI can flip it).
    """

    input_sensor_interval: int = Field(30, ge=1)
    input_sensor_running: bool = True
    automation_interval: int = Field(30, ge=1)
    automation_running: bool = True
    observe_cron: str = "0 * * * *"
    observe_schedule_running: bool = False

    @field_validator("observe_cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        if len(cron.split()) != 5:
            raise ValueError(
                f"automation.observe_cron: expected 5 cron fields "
                f"(minute hour day month weekday), got {cron!r}"
            )
        return cron


class PipelineConfig(_Model):
    """One segmentation pipeline over one affinities volume.

    Paths are ``container.zarr/array`` strings, relative to the folder of the
    YAML file they came from (or to the working directory).
    """

    name: str
    affinities: str
    neighborhood: list[Offset]
    mask: str | None = None
    ground_truth: str | None = None
    # A raw image on the same grid: no step reads it, the viewer shows it under the labels.
    raw: str | None = None
    fragments_array: str
    segments_array: str | None = None
    lut_path: str | None = None
    db_url: str
    block_size: Offset
    context: Offset
    # Blocks per Dagster partition (a brick); "auto": one block per partition on small
    # grids, bricks of ~2**19 voxels and at most 4096 partitions on large ones
    # (geometry.auto_blocks_per_partition).
    blocks_per_partition: Offset | Literal["auto"] = "auto"
    # Step sections are optional so that a pipeline can be declared one step at
    # a time (the tutorial front door); running a step without its section fails.
    fragments: FragmentsConfig | None = None
    edges: EdgesConfig = Field(default_factory=EdgesConfig)
    lut: LutConfig | None = None
    eval_warn_voi: float = 0.5
    eval_warn_are: float = 0.3
    # Evaluation reads this many blocks at most (evenly spaced); 0 = the whole volume.
    eval_sample_blocks: int = Field(64, ge=0)
    # The per-block integrity checks re-read at most this many of the run's blocks
    # (one per stretch of blocks, placed by the run id); 0 = every block of the run.
    check_sample_blocks: int = Field(16, ge=0)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not IDENTIFIER.match(name):
            raise ValueError(
                f"name: {name!r} must be a plain identifier (it prefixes Dagster asset keys)"
            )
        return name

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, db_url: str) -> str:
        # The scheme is checked here (static); the driver and the SQLite folder,
        # which depend on this machine, when the pipeline is bound to its data.
        try:
            url = sa.engine.make_url(db_url)
        except sa.exc.ArgumentError as exc:
            raise ValueError(
                f"db_url: {db_url!r} is not a SQLAlchemy URL; expected e.g. "
                "'sqlite:///path/graph.db' or 'postgresql://user@host/db'"
            ) from exc
        try:
            url.get_dialect()
        except sa.exc.NoSuchModuleError as exc:
            raise ValueError(
                f"db_url: unknown database scheme {url.drivername!r} in "
                f"{url.render_as_string(hide_password=True)!r}; expected a SQLAlchemy "
                "dialect such as 'sqlite', 'postgresql' or 'postgresql+psycopg'"
            ) from exc
        return db_url

    @field_validator("lut_path")
    @classmethod
    def _npz(cls, path: str | None) -> str | None:
        # volara's LUT files are .npz; np.savez would add the suffix anyway.
        if path is None or path.endswith(".npz"):
            return path
        return path + ".npz"

    @field_validator("neighborhood")
    @classmethod
    def _neighborhood(cls, neighborhood: list[Offset]) -> list[Offset]:
        if not neighborhood:
            raise ValueError("neighborhood: expected at least one offset")
        if any(o == (0, 0, 0) for o in neighborhood):
            raise ValueError("neighborhood: offset (0, 0, 0) is not an affinity")
        return neighborhood

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, v: Offset) -> Offset:
        if any(x < 1 for x in v):
            raise ValueError(f"block_size: every entry must be >= 1, got {v}")
        return v

    @field_validator("context", "blocks_per_partition")
    @classmethod
    def _non_negative(cls, v: Offset | str) -> Offset | str:
        if v != "auto" and any(x < 0 for x in v):
            raise ValueError(f"expected non-negative entries, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        n = len(self.neighborhood)
        frags = self.fragments
        if frags is not None and len(frags.bias) != n:
            raise ValueError(
                f"fragments.bias: expected {n} values (one per neighborhood offset), "
                f"got {len(frags.bias)}"
            )
        if frags is not None and frags.strides is not None and len(frags.strides) != n:
            raise ValueError(
                f"fragments.strides: expected {n} strides (one per neighborhood offset), "
                f"got {len(frags.strides)}"
            )
        reach = tuple(max(abs(o[d]) for o in self.neighborhood) for d in range(3))
        if any(c < r for c, r in zip(self.context, reach, strict=True)):
            raise ValueError(
                f"context: {self.context} is smaller than the largest neighborhood offset "
                f"{reach}; expected context >= {reach} on every axis"
            )
        check_context(self.context, self.block_size)
        if self.blocks_per_partition != "auto" and any(b < 1 for b in self.blocks_per_partition):
            raise ValueError(
                f"blocks_per_partition: every entry must be >= 1, got {self.blocks_per_partition}"
            )
        hood = set(self.neighborhood)
        for group, offsets in self.score_groups.items():
            for off in offsets:
                if tuple(off) not in hood:
                    raise ValueError(
                        f"edges.scores.{group}: offset {tuple(off)} is not in the "
                        f"neighborhood {self.neighborhood}"
                    )
        for attr in self.lut.weights if self.lut is not None else ():
            if attr not in self.score_groups:
                raise ValueError(
                    f"lut.weights: unknown edge attribute {attr!r}; expected one of "
                    f"{sorted(self.score_groups)} (the edges.scores names)"
                )
        for attr in frags.node_attrs if frags is not None else ():
            if not IDENTIFIER.match(attr):
                raise ValueError(f"fragments.node_attrs: {attr!r} must be a plain identifier")
        self._check_paths()
        return self

    def _check_paths(self) -> None:
        """No output may be an input, lie inside one or contain one, nor share a path
        with another output: a run would overwrite the data it reads or mix two
        outputs in one array."""
        inputs = {f: getattr(self, f) for f in INPUT_FIELDS if getattr(self, f)}
        outputs = self.output_paths
        for field, path in outputs.items():
            for other, source in inputs.items():
                how = _clash(path, source)
                if how is not None:
                    raise ValueError(
                        f"{field}: {path} {how} the {other} input {source}; expected an "
                        "output path apart from every input (inputs are never written)"
                    )
        names = list(outputs)
        for i, field in enumerate(names):
            for other in names[:i]:
                how = _clash(outputs[field], outputs[other])
                if how is not None:
                    raise ValueError(
                        f"{field}: {outputs[field]} {how} the {other} output "
                        f"{outputs[other]}; expected every output at its own path"
                    )

    @property
    def output_paths(self) -> dict[str, str]:
        """Every path this pipeline writes, by field (``db_url`` for a SQLite file)."""
        out = {f: getattr(self, f) for f in OUTPUT_FIELDS if getattr(self, f)}
        db_file = sqlite_file(self.db_url)
        if db_file is not None:
            out["db_url"] = db_file
        return out

    # -- derived -------------------------------------------------------------
    @property
    def score_groups(self) -> dict[str, list[Offset]]:
        """Score groups; by default one group ``aff`` over the whole neighborhood."""
        if self.edges.scores is None:
            return {"aff": list(self.neighborhood)}
        return {k: [tuple(o) for o in v] for k, v in self.edges.scores.items()}

    def require(self, section: str) -> Any:
        """The value of an optional field a step needs; a clear error when it is unset."""
        value = getattr(self, section)
        if value is None:
            raise ValueError(
                f"{section}: pipeline {self.name!r} has no {section!r} configured, "
                "which this step needs"
            )
        return value

    @property
    def node_attrs(self) -> dict[str, str]:
        return dict(self.fragments.node_attrs) if self.fragments is not None else {}

    @property
    def edge_attrs(self) -> dict[str, str]:
        return {name: "float" for name in self.score_groups}

    def resolve(self, base: str | Path) -> PipelineConfig:
        """A copy with relative file paths made absolute against ``base``."""
        base = Path(base)

        def fix(p: str | None) -> str | None:
            if p is None:
                return None
            return str(p if Path(p).is_absolute() else (base / p).resolve())

        update: dict[str, Any] = {
            k: fix(getattr(self, k))
            for k in (
                "affinities",
                "mask",
                "ground_truth",
                "raw",
                "fragments_array",
                "segments_array",
                "lut_path",
            )
        }
        url = self.db_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url[len("sqlite:///") :]
            if rel and rel != ":memory:":
                url = "sqlite:///" + str((base / rel).resolve())
        update["db_url"] = url
        # Validated again: two paths that differ as written may be one file once resolved.
        return self.model_validate({**self.model_dump(), **update})

    @property
    def input_versions_path(self) -> str:
        """The affinities' sub-fingerprint cache (:mod:`volara_assets.storage.fingerprints`):
        next to the fragments array, on storage the pipeline writes anyway, never inside
        the input."""
        return f"{self.fragments_array.rstrip('/')}.input_versions.json"

    # -- YAML ----------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Load and validate a pipeline YAML file; relative paths resolve against its folder."""
        path = Path(path)
        try:
            # safe_load: a tag such as !!python/object never constructs an object.
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not a plain YAML pipeline file: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        return cls.model_validate(data).resolve(path.parent)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text
