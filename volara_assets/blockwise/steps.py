"""The tutorial's blockwise steps as pydantic models that fill in one shared ``PipelineConfig``.

Each step knows its own section of the pipeline (``ExtractFrags`` the fragments,
``AffAgglom`` the edge scores, ``GraphMWS`` the LUT weights, ``Relabel`` the
segments) and recovers the rest from the record an earlier step left (see
:mod:`volara_assets.blockwise.record`). Running a step materializes its Dagster
assets, built by the same factory as the YAML pipelines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from volara_assets.config import EdgesConfig, FragmentsConfig, LutConfig, PipelineConfig
from volara_assets.datasets import Affs, Labels, Raw
from volara_assets.dbs import PostgreSQL, SQLite, as_world_roi
from volara_assets.geometry import BlockGrid, Offset
from volara_assets.lut import LUT
from volara_assets.runtime.bound import BoundPipeline

from .record import pipeline_name, read_array_record, read_db_record

if TYPE_CHECKING:
    from dagster import Definitions, ExecuteInProcessResult

    from .pipeline import Pipeline

__all__ = ["AffAgglom", "BlockwiseStep", "ExtractFrags", "GraphMWS", "Relabel"]

WorldRoiArg = Annotated[tuple[Offset, Offset], BeforeValidator(as_world_roi)]
"""A world ROI argument: ``(offset, shape)``, a ``WorldRoi`` or a ``funlib.geometry.Roi``."""
AnyDB = Annotated[SQLite | PostgreSQL, Field(discriminator="db_type")]


def _merge(base: PipelineConfig | None, update: dict[str, Any]) -> PipelineConfig:
    data = base.model_dump() if base is not None else {}
    data.update(update)
    return PipelineConfig.model_validate(data)


class BlockwiseStep(BaseModel):
    """One step of the pipeline; ``a + b`` chains steps, ``run_blockwise`` runs them.

    Parameters
    ----------
    roi : (offset, shape), optional
        World ROI to process (voxel-aligned): only the partitions with a block
        whose write ROI it touches are materialized, so a later run over another
        ROI continues the volume. Default: the whole volume. What each step does
        with it (edges need their neighbours' fragments, the LUT is global) is in
        :meth:`volara_assets.blockwise.pipeline.Pipeline.run_blockwise`.
    num_workers : int
        Worker processes when run with ``multiprocessing=True``; when left
        unset, one per CPU.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    roi: WorldRoiArg | None = None
    num_workers: int = Field(1, ge=1)

    outputs: ClassVar[tuple[str, ...]] = ()
    """Names of the Dagster assets this step materializes."""

    # -- the shared config ----------------------------------------------------
    def locate(self) -> PipelineConfig | None:
        """The pipeline an earlier step recorded where this step can find it, if any."""
        raise NotImplementedError

    def apply(self, base: PipelineConfig | None) -> PipelineConfig:
        """``base`` with this step's section filled in (validated)."""
        raise NotImplementedError

    def config(self) -> PipelineConfig:
        """The pipeline config this step runs with: the recorded one plus this step's section."""
        return self.apply(self.locate())

    def _require(self, base: PipelineConfig | None, where: str, needs: str) -> PipelineConfig:
        if base is None:
            name = type(self).__name__
            raise ValueError(
                f"{name}: {where} holds no pipeline record, so {needs} are unknown; run "
                f"ExtractFrags (which records them) first, or chain the steps, e.g. "
                f"extract_frags + ... + {name.lower()}"
            )
        return base

    def _check_roi(self, config: PipelineConfig) -> None:
        """Fail before any write if the ``roi`` is not voxel-aligned or misses the volume."""
        if self.roi is not None:
            self.roi_partitions(BoundPipeline(config).grid)

    def roi_partitions(self, grid: BlockGrid) -> list[str] | None:
        """The partitions whose blocks' write ROIs the ``roi`` touches; ``None``: all of them.

        A ``roi`` containing the whole volume (or none) means the whole volume.
        """
        if self.roi is None:
            return None
        name = type(self).__name__
        try:
            roi = grid.roi_from_world(*self.roi)
        except ValueError as exc:
            raise ValueError(f"{name}.{exc}") from None
        if roi.contains(grid.volume_roi):
            return None
        keys = grid.partitions_writing(roi)
        if not keys:
            raise ValueError(
                f"{name}.roi: {self.roi} lies outside the volume "
                f"{grid.world_roi(grid.volume_roi)} (offset, shape in world units)"
            )
        return keys

    def _check_grid(self, base: PipelineConfig, block_size: Offset) -> None:
        if tuple(block_size) != tuple(base.block_size):
            raise ValueError(
                f"{type(self).__name__}.block_size: {tuple(block_size)} differs from the "
                f"block_size {tuple(base.block_size)} of pipeline {base.name!r} (recorded by "
                "ExtractFrags); a pipeline has one block grid, so use the same block_size"
            )

    def _continuing(
        self, base: PipelineConfig | None, frags: Labels, block_size: Offset, needs: str
    ) -> PipelineConfig:
        """The recorded pipeline of ``frags``, checked to be the one this step continues."""
        base = self._require(base, f"the fragments array {frags.path}", needs)
        if frags.path != base.fragments_array:
            raise ValueError(
                f"{type(self).__name__}.frags_data: {frags.path} is not the fragments array "
                f"{base.fragments_array} of pipeline {base.name!r} it continues"
            )
        self._check_grid(base, block_size)
        return base

    # -- running ----------------------------------------------------------------
    def run_blockwise(self, multiprocessing: bool = False) -> ExecuteInProcessResult:
        """Materialize this step's assets for every block (see :meth:`Pipeline.run_blockwise`)."""
        from .pipeline import Pipeline

        return Pipeline([self]).run_blockwise(multiprocessing=multiprocessing)

    def to_definitions(self) -> Definitions:
        """The Dagster ``Definitions`` of the pipeline this step belongs to."""
        from .pipeline import Pipeline

        return Pipeline([self]).to_definitions()

    def __add__(self, other: BlockwiseStep | Pipeline) -> Pipeline:
        """A pipeline running ``self`` and then ``other``."""
        from .pipeline import Pipeline

        return Pipeline([self]) + other


class ExtractFrags(BlockwiseStep):
    """Fragments: mutex watershed on the affinities of every block (plus context).

    Writes the ``fragments`` array and one graph node per fragment, and records
    the pipeline (affinities, neighborhood, block grid, db) for later steps.

    Parameters
    ----------
    db : SQLite or PostgreSQL
        The fragment graph.
    affs_data : Affs
        Affinities and their neighborhood.
    frags_data : Labels
        Where the fragments are written.
    block_size, context : (3,) int
        Block write size and the context read around it, in voxels.
    bias : list of float
        Added to each affinity channel (one per neighborhood offset); negative splits.
    mask_data : Raw or Labels, optional
        Voxels outside ``mask > 0`` get no fragment.
    strides, sigma, noise_eps, filter_fragments, remove_debris, randomized_strides
        As :class:`volara_assets.config.FragmentsConfig`.
    engine : {"numba", "mwatershed"}
        The mutex watershed kernel: ours, or ``mwatershed`` for fragments
        identical to volara's.
    """

    outputs: ClassVar[tuple[str, ...]] = ("fragments", "fragment_nodes")

    db: AnyDB
    affs_data: Affs
    frags_data: Labels
    mask_data: Raw | Labels | None = None
    block_size: Offset
    context: Offset
    bias: list[float]
    strides: list[Offset] | None = None
    sigma: tuple[float, float, float] | None = None
    noise_eps: float | None = None
    filter_fragments: float = 0.0
    remove_debris: int = Field(0, ge=0)
    randomized_strides: bool = False
    engine: Literal["numba", "mwatershed"] = "numba"

    def locate(self) -> PipelineConfig | None:
        return read_array_record(self.frags_data.path)

    def apply(self, base: PipelineConfig | None) -> PipelineConfig:
        node_attrs, edge_attrs = self.db.attrs()
        neighborhood = [tuple(o) for o in self.affs_data.neighborhood]
        edges = base.edges if base is not None else EdgesConfig()
        if edge_attrs and (edges.scores is None or set(edges.scores) != set(edge_attrs)):
            # The edge table's columns are the score names, and it is created with
            # the node table, so they are fixed now; AffAgglom sets the offsets.
            edges = EdgesConfig(scores={name: neighborhood for name in edge_attrs})
        config = _merge(
            base,
            {
                "name": pipeline_name(self.frags_data.path),
                "affinities": self.affs_data.path,
                "neighborhood": neighborhood,
                "mask": self.mask_data.path if self.mask_data is not None else None,
                "fragments_array": self.frags_data.path,
                "db_url": self.db.url,
                "block_size": self.block_size,
                "context": self.context,
                "fragments": FragmentsConfig(
                    bias=self.bias,
                    sigma=self.sigma,
                    noise_eps=self.noise_eps,
                    strides=self.strides,
                    randomized_strides=self.randomized_strides,
                    filter_fragments=self.filter_fragments,
                    remove_debris=self.remove_debris,
                    node_attrs=node_attrs,
                    engine=self.engine,
                ),
                "edges": edges,
            },
        )
        self._check_roi(config)
        return config


class AffAgglom(BlockwiseStep):
    """Edges: one per pair of touching fragments, scored by mean affinity per score group.

    Parameters
    ----------
    db : SQLite or PostgreSQL
        The fragment graph (the one ``ExtractFrags`` wrote).
    affs_data : Affs
        Affinities and their neighborhood.
    frags_data : Labels
        The fragments ``ExtractFrags`` wrote (its pipeline record is read there).
    block_size, context : (3,) int
        In voxels; ``block_size`` must be the pipeline's.
    scores : dict of str to list of (3,) int
        Score groups: edge attribute name -> the neighborhood offsets it averages.
    """

    outputs: ClassVar[tuple[str, ...]] = ("edges",)

    db: AnyDB
    affs_data: Affs
    frags_data: Labels
    block_size: Offset
    context: Offset
    scores: dict[str, list[Offset]]

    def locate(self) -> PipelineConfig | None:
        return read_array_record(self.frags_data.path)

    def apply(self, base: PipelineConfig | None) -> PipelineConfig:
        needs = "the fragments it continues and their block grid"
        base = self._continuing(base, self.frags_data, self.block_size, needs)
        declared = self.db.edge_attrs
        if declared is not None and set(declared) != set(self.scores):
            raise ValueError(
                f"AffAgglom.scores: names {sorted(self.scores)} must be the db's edge_attrs "
                f"{sorted(declared)} (the columns of the edge table)"
            )
        config = _merge(
            base,
            {
                "affinities": self.affs_data.path,
                "neighborhood": [tuple(o) for o in self.affs_data.neighborhood],
                "db_url": self.db.url,
                "context": self.context,
                "edges": EdgesConfig(scores=self.scores),
            },
        )
        self._check_roi(config)
        return config


class GraphMWS(BlockwiseStep):
    """The lookup table: mutex watershed on the whole fragment graph.

    Parameters
    ----------
    db : SQLite or PostgreSQL
        The fragment graph with scored edges (its pipeline record is read there).
    lut : LUT
        Where the fragment -> segment table is written.
    weights : dict of str to (float, float)
        Edge attribute -> ``(scale, bias)``; an edge's weight is
        ``scale * score + bias`` (positive merges, negative splits).
    roi : (offset, shape), optional
        The LUT is global: it is solved over every node and edge stored so far,
        whatever the ``roi``; the ``roi`` only names the blocks whose fragments
        must exist (see :meth:`volara_assets.blockwise.pipeline.Pipeline.run_blockwise`).
    edge_per_attr : bool
        One mutex-watershed edge per attribute (True) or their sum (False).
    """

    outputs: ClassVar[tuple[str, ...]] = ("lut",)

    db: AnyDB
    lut: LUT
    weights: dict[str, tuple[float, float]]
    edge_per_attr: bool = True

    def locate(self) -> PipelineConfig | None:
        return read_db_record(self.db.url)

    def apply(self, base: PipelineConfig | None) -> PipelineConfig:
        base = self._require(
            base,
            f"the db {self.db.label}",
            "the fragments, affinities and block grid of its graph",
        )
        if self.db.url != base.db_url:
            raise ValueError(
                f"GraphMWS.db: {self.db.label} is not the db of pipeline {base.name!r} "
                f"it continues ({base.db_url})"
            )
        unscored = sorted(set(self.weights) - set(base.score_groups))
        if unscored:
            raise ValueError(
                f"GraphMWS.weights: edge attributes {unscored} are not scored in pipeline "
                f"{base.name!r} (scored: {sorted(base.score_groups)}); run AffAgglom with "
                f"scores for them first"
            )
        config = _merge(
            base,
            {
                "lut": LutConfig(weights=self.weights, edge_per_attr=self.edge_per_attr),
                "lut_path": str(self.lut.file.resolve()),
            },
        )
        self._check_roi(config)
        return config


class Relabel(BlockwiseStep):
    """Segments: the fragments relabelled through the lookup table, block by block.

    Parameters
    ----------
    frags_data : Labels
        The fragments (their pipeline record is read there).
    seg_data : Labels
        Where the segments are written.
    lut : LUT
        The fragment -> segment table ``GraphMWS`` wrote.
    block_size : (3,) int
        In voxels; must be the pipeline's.
    """

    outputs: ClassVar[tuple[str, ...]] = ("segments",)

    frags_data: Labels
    seg_data: Labels
    lut: LUT
    block_size: Offset

    def locate(self) -> PipelineConfig | None:
        return read_array_record(self.frags_data.path)

    def apply(self, base: PipelineConfig | None) -> PipelineConfig:
        base = self._continuing(
            base, self.frags_data, self.block_size, "the fragments' pipeline and block grid"
        )
        config = _merge(
            base,
            {"segments_array": self.seg_data.path, "lut_path": str(self.lut.file.resolve())},
        )
        self._check_roi(config)
        return config
