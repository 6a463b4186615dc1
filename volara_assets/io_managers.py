"""Dagster IO managers: where fragments, segments, graph tables and the LUT are stored.

Blockwise steps write while they run (a block at a time, from whichever worker
computed it), so for partitioned outputs an IO manager hands the step a
picklable *sink* (``sink``) and, in ``handle_output``, receives the step's
report. Downstream steps get lazy readers from ``load_input``: an
``ArrayHandle`` reads only the ROI (block plus halo) a block asks for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dagster import ConfigurableIOManager, InputContext, OutputContext

from .config import PipelineConfig
from .pipeline import Pipeline
from .storage.handles import ArrayHandle, GraphHandle, LutHandle
from .storage.lut import save_lut
from .tables import EdgeTable, NodeTable

_PIPELINES: dict[str, Pipeline] = {}


def pipeline_for(config_json: str) -> Pipeline:
    """The (cached) ``Pipeline`` of a serialized config: inputs are checked once per process."""
    pipeline = _PIPELINES.get(config_json)
    if pipeline is None:
        pipeline = _PIPELINES[config_json] = Pipeline(
            PipelineConfig.model_validate_json(config_json)
        )
    return pipeline


class _PipelineIOManager(ConfigurableIOManager):
    pipeline_config: str
    """The pipeline's config as JSON (the factory fills it in)."""

    @property
    def pipeline(self) -> Pipeline:
        return pipeline_for(self.pipeline_config)

    def _report_metadata(self, context: OutputContext, obj: Any) -> None:
        if isinstance(obj, dict):
            context.add_output_metadata({k: v for k, v in obj.items() if k != "partitions"})


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

    def sink(self, name: str) -> ArrayHandle:
        """Create the output array if absent (metadata, block-aligned chunks); a writer handle."""
        handle = self.handle_for(name)
        self.pipeline.create_label_array(handle)
        return handle

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        # The step's blocks were written through ``sink``; ``obj`` is its report.
        self._report_metadata(context, obj)
        context.add_output_metadata({"path": self.handle_for(context.asset_key.path[-1]).path})

    def load_input(self, context: InputContext) -> ArrayHandle:
        return self.handle_for(context.asset_key.path[-1])


class SqlIOManager(_PipelineIOManager):
    """Fragment nodes and edges in the SQL graph store (one row set per block)."""

    def sink(self, name: str) -> GraphHandle:
        handle = self.pipeline.graph
        handle.store().create()
        return handle

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        self._report_metadata(context, obj)

    def load_input(self, context: InputContext) -> NodeTable | EdgeTable:
        """All nodes or all edges in bulk (for the global step)."""
        store = self.pipeline.graph.store()
        name = context.asset_key.path[-1]
        if name == "fragment_nodes":
            return store.read_nodes()
        if name == "edges":
            return store.read_edges()
        raise KeyError(f"SqlIOManager: no table for asset {name!r}")


class LutIOManager(_PipelineIOManager):
    """The fragment -> segment lookup table as volara's ``.npz`` (``fragment_segment_lut``)."""

    def handle(self) -> LutHandle:
        self.pipeline.config.require("lut_path")
        return self.pipeline.lut

    def handle_output(self, context: OutputContext, obj: np.ndarray) -> None:
        path = save_lut(self.handle().path, obj)
        context.add_output_metadata({"path": str(path)})

    def load_input(self, context: InputContext) -> LutHandle:
        return self.handle()
