"""Where a tutorial-style pipeline remembers itself between steps: its name and recorded config.

Steps share data but not arguments (``GraphMWS`` is given only a db, a LUT and
weights), so every run records the whole :class:`~volara_assets.config.PipelineConfig`
twice: in the fragments array's zarr attributes (found by ``AffAgglom`` and
``Relabel``, which are given the fragments) and in a one-row table of the graph
database (found by ``GraphMWS``, which is given the db).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import sqlalchemy as sa
import zarr
from pydantic import ValidationError

from volara_assets.config import PipelineConfig
from volara_assets.datasets import WorldRoi
from volara_assets.storage.arrays import open_array
from volara_assets.storage.graph import GraphStore

__all__ = [
    "RECORD_ATTR",
    "RECORD_TABLE",
    "pipeline_name",
    "read_array_record",
    "read_db_record",
    "volume_roi",
    "write_array_record",
    "write_db_record",
]

RECORD_ATTR = "volara_assets_pipeline"
"""Zarr attribute of the fragments array holding the pipeline config (JSON)."""
RECORD_TABLE = "volara_assets_pipeline"
"""Table of the graph database holding the pipeline config (one row)."""

_metadata = sa.MetaData()
_table = sa.Table(
    RECORD_TABLE,
    _metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("fragments_array", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
)


def pipeline_name(fragments_path: str | Path) -> str:
    """The Dagster name (asset key prefix) of the pipeline writing ``fragments_path``.

    Readable and stable: the container and array names, sanitized to an
    identifier, plus 8 hex digits of the absolute path so that two tutorials in
    different folders never share asset keys in one Dagster instance, e.g.
    ``/data/cells3d.zarr/fragments`` -> ``cells3d_fragments_1a2b3c4d``.
    """
    path = Path(fragments_path).resolve()
    parts = list(path.parts)
    start = next((i for i, p in enumerate(parts) if p.endswith(".zarr")), len(parts) - 1)
    words = [parts[start].removesuffix(".zarr"), *parts[start + 1 :]]
    stem = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(words)).strip("_") or "pipeline"
    if not stem[0].isalpha():
        stem = f"p_{stem}"
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{stem}_{digest}"


def _parse(text: str | dict, where: str) -> PipelineConfig:
    try:
        if isinstance(text, str):
            return PipelineConfig.model_validate_json(text)
        return PipelineConfig.model_validate(text)
    except ValidationError as exc:
        raise ValueError(
            f"{where}: the recorded pipeline config is not valid for this version of "
            f"volara_assets ({exc.error_count()} errors); rerun ExtractFrags to record it anew.\n"
            f"{exc}"
        ) from exc


def read_array_record(path: str | Path) -> PipelineConfig | None:
    """The pipeline recorded on the fragments array at ``path``; ``None`` if absent."""
    try:
        attrs = open_array(path).zarr_array.attrs
    except FileNotFoundError:
        return None
    record = attrs.get(RECORD_ATTR)
    return None if record is None else _parse(record, f"{path} attribute {RECORD_ATTR!r}")


def write_array_record(config: PipelineConfig) -> None:
    """Record ``config`` on its fragments array (which must exist)."""
    array = zarr.open_array(store=config.fragments_array, mode="r+")
    array.attrs[RECORD_ATTR] = config.model_dump(mode="json")


def _engine(url: str) -> sa.Engine:
    return GraphStore(url, edge_attrs={}).engine


def read_db_record(url: str) -> PipelineConfig | None:
    """The pipeline recorded in the graph database at ``url``; ``None`` if absent."""
    if url.startswith("sqlite:///"):
        file = url[len("sqlite:///") :]
        if not Path(file).is_file():
            return None
    engine = _engine(url)
    if not sa.inspect(engine).has_table(RECORD_TABLE):
        return None
    with engine.connect() as conn:
        row = conn.execute(sa.select(_table.c.config)).first()
    return None if row is None else _parse(row[0], f"table {RECORD_TABLE!r} of {url}")


def write_db_record(config: PipelineConfig) -> None:
    """Record ``config`` in its graph database, replacing an earlier record (one per db)."""
    engine = _engine(config.db_url)
    with engine.connect() as conn, conn.begin():
        _metadata.create_all(conn, checkfirst=True)
        conn.execute(sa.delete(_table))
        conn.execute(
            sa.insert(_table).values(
                name=config.name,
                fragments_array=config.fragments_array,
                config=config.model_dump_json(),
            )
        )


def volume_roi(config: PipelineConfig) -> WorldRoi:
    """The world ROI of the pipeline's affinities (the volume every step covers)."""
    try:
        offset, shape = open_array(config.affinities).roi
    except FileNotFoundError as exc:
        raise ValueError(
            f"affinities: no zarr array at {config.affinities} (recorded for pipeline "
            f"{config.name!r})"
        ) from exc
    return WorldRoi(tuple(offset), tuple(shape))  # type: ignore[arg-type]
