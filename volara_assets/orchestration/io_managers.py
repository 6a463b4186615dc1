"""Dagster IO managers: for each asset, where and how its partitions are stored and loaded.

=================  ==================  ===================================  =====================
asset              IO manager          stored as                            loaded as
=================  ==================  ===================================  =====================
``affinities``     ``ZarrIOManager``   the input zarr (never written)       lazy ROI reader
``fragments``      ``ZarrIOManager``   uint64 zarr, one chunk per block     lazy ROI reader
``segments``       ``ZarrIOManager``   uint64 zarr, one chunk per block     lazy ROI reader
``fragment_nodes`` ``SqlIOManager``    SQL node table, rows keyed by block  every node (bulk)
``edges``          ``SqlIOManager``    SQL edge table, rows keyed by block  every edge (bulk) [*]_
``lut``            ``LutIOManager``    volara's ``.npz``, written atomically  the LUT file's handle
=================  ==================  ===================================  =====================

.. [*] The ``lut`` asset does not load the edges as an input: it depends on them and
   streams them from the graph store in score order (``GraphStore.edges_by_score``),
   so its memory grows with the fragments, not with the edges.

Why the partitioned outputs are not passed to ``handle_output``: blocks are
computed by workers (a process pool, Dask) and a block's voxels and rows must
never travel through the Dagster process. So each IO manager owns its storage
in three places:

* ``writer(name)``: creates the output if absent (or checks that an existing one
  has the expected shape, dtype and chunks) and hands the step a small picklable
  writer that the workers use block by block;
* ``handle_output(context, report)``: receives the step's :class:`StepReport`,
  verifies what the run's partitions wrote (SQL: the rows of every partition's
  blocks are the rows the blocks reported) and records per-partition metadata
  (path, stored chunks and bytes or row counts, a preview of label arrays, and
  for ``segments`` a link to the neuroglancer view of the partition's blocks);
* ``load_input``: lazy readers for arrays, bulk tables for the global step.

All of them, the asset factory and the checks share one bound pipeline per
process (:func:`volara_assets.runtime.bound.bound_pipeline`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext

from ..runtime.bound import BoundPipeline, bound_pipeline
from ..runtime.step import StepReport
from ..storage.fingerprints import ChunkFiles
from ..storage.handles import ArrayHandle, GraphHandle, LutHandle
from ..storage.lut import save_lut
from ..tables import EdgeTable, NodeTable
from ..viewer import DEFAULT_PORT, block_url
from .metadata import slice_preview

__all__ = ["LutIOManager", "SqlIOManager", "ZarrIOManager"]


class _PipelineIOManager(ConfigurableIOManager):
    pipeline_config: str
    """The pipeline's config as JSON (the factory fills it in)."""

    @property
    def pipeline(self) -> BoundPipeline:
        return bound_pipeline(self.pipeline_config)

    def partition_metadata(self, name: str, key: str, stats: dict[str, float]) -> dict[str, Any]:
        """Metadata of partition ``key`` of asset ``name``: the step's counts plus storage facts."""
        md: dict[str, Any] = {k: int(v) for k, v in stats.items() if k != "seconds"}
        md["seconds"] = MetadataValue.float(round(float(stats.get("seconds", 0.0)), 3))
        return md

    def handle_output(self, context: OutputContext, obj: StepReport) -> None:
        name = context.asset_key.path[-1]
        self.verify(name, obj)
        step = context.step_context
        for key in obj.partitions:
            step.add_asset_metadata(
                self.partition_metadata(name, key, obj.stats[key]),
                asset_key=context.asset_key,
                partition_key=key,
            )

    def verify(self, name: str, report: StepReport) -> None:
        """Raise if the stored data of ``report``'s partitions contradicts the report."""


class ZarrIOManager(_PipelineIOManager):
    """Label arrays (``fragments``, ``segments``) and the ``affinities`` input, as zarr v3."""

    def handle_for(self, name: str) -> ArrayHandle:
        p = self.pipeline
        if name == "segments":
            p.config.require("segments_array")
        handles = {"affinities": p.affinities, "fragments": p.fragments, "segments": p.segments}
        if name not in handles:
            raise KeyError(f"ZarrIOManager: no zarr array for asset {name!r}")
        return handles[name]

    def writer(self, name: str) -> ArrayHandle:
        """Create the output array if absent (metadata, one chunk per block); its writer."""
        handle = self.handle_for(name)
        self.pipeline.create_label_array(handle)
        return handle

    def partition_metadata(self, name: str, key: str, stats: dict[str, float]) -> dict[str, Any]:
        md = super().partition_metadata(name, key, stats)
        handle = self.handle_for(name)
        grid = self.pipeline.grid
        chunks, size = ChunkFiles(handle.path).stored(grid.partition_roi(key))
        # An all-background block stores no chunk (zarr keeps the fill value implicit).
        md.update({"path": handle.path, "stored_chunks": chunks, "stored_bytes": size})
        try:
            md.update(slice_preview(grid, handle, name, key))
        except Exception as exc:  # noqa: BLE001 - a picture must never fail a step
            md["preview"] = f"no preview: {exc}"
        if name == "segments":
            # Opens only while `make view` serves the pipeline on DEFAULT_PORT.
            md["viewer"] = MetadataValue.url(block_url(self.pipeline.config, grid, key))
            md["viewer_note"] = MetadataValue.text(
                f"neuroglancer at this block; needs `make view` (127.0.0.1:{DEFAULT_PORT}) running"
            )
        return md

    def load_input(self, context: InputContext) -> ArrayHandle:
        return self.handle_for(context.asset_key.path[-1])


class SqlIOManager(_PipelineIOManager):
    """Fragment nodes and edges in the SQL graph store (one row set per block)."""

    _TABLES = {"fragment_nodes": ("nodes", "fragments"), "edges": ("edges", "edges")}

    def writer(self, name: str) -> GraphHandle:
        """Create the node and edge tables if absent; the graph writer."""
        self._table(name)
        handle = self.pipeline.graph
        handle.store().create()
        return handle

    def _table(self, name: str) -> tuple[str, str]:
        if name not in self._TABLES:
            raise KeyError(f"SqlIOManager: no table for asset {name!r}")
        return self._TABLES[name]

    def verify(self, name: str, report: StepReport) -> None:
        """Every partition's blocks hold exactly the rows its blocks reported writing."""
        table, counted = self._table(name)
        store = self.pipeline.graph.store()
        blocks = [b for k in report.partitions for b in report.blocks_of[k]]
        stored = store.rows_per_block(table, blocks)
        wrong = []
        for key in report.partitions:
            rows = sum(stored[b] for b in report.blocks_of[key])
            expected = int(report.stats[key].get(counted, 0))
            if rows != expected:
                wrong.append(f"{key}: {rows} {table} rows stored, {expected} written")
        if wrong:
            raise RuntimeError(
                f"{name}: the stored rows differ from what the blocks wrote (a concurrent "
                "writer on the same database?): " + "; ".join(wrong[:10])
            )

    def partition_metadata(self, name: str, key: str, stats: dict[str, float]) -> dict[str, Any]:
        md = super().partition_metadata(name, key, stats)
        md["table"] = self.pipeline.graph.store().table(self._table(name)[0]).name
        return md

    def load_input(self, context: InputContext) -> NodeTable | EdgeTable:
        """All nodes or all edges in bulk (for the global step)."""
        table, _ = self._table(context.asset_key.path[-1])
        store = self.pipeline.graph.store()
        return store.read_nodes() if table == "nodes" else store.read_edges()


class LutIOManager(_PipelineIOManager):
    """The fragment -> segment lookup table as volara's ``.npz`` (``fragment_segment_lut``)."""

    def handle(self) -> LutHandle:
        self.pipeline.config.require("lut_path")
        return self.pipeline.lut

    def handle_output(self, context: OutputContext, obj: np.ndarray) -> None:
        path = save_lut(self.handle().path, obj)
        context.add_output_metadata({"path": str(path), "stored_bytes": path.stat().st_size})

    def load_input(self, context: InputContext) -> LutHandle:
        return self.handle()
