"""Asset checks: fragment ids, nodes against the array, LUT coverage, segments, evaluation.

The integrity checks are asset check definitions (:func:`build_pipeline_checks`):
they run in the same run as the asset they check (Dagster adds a materialized
asset's checks to the run) and read the store directly. ``evaluation`` is a
check spec of the ``segments`` step, computed at its end by :func:`evaluation_result`.
What each check verifies, and at what cost, is in :mod:`volara_assets.runtime.verify`.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from ..geometry import BlockGrid
from ..runtime.bound import BoundPipeline
from ..runtime.verify import (
    Verdict,
    check_evaluation,
    check_fragment_ids,
    check_lut_covers_fragments,
    check_nodes_match_fragments,
    check_segments_match_lut,
)

__all__ = ["build_pipeline_checks", "evaluation_result", "run_partition_keys", "run_phase"]


def as_check_result(verdict: Verdict) -> AssetCheckResult:
    """A verdict as Dagster's check result (floats as float metadata, problems as Markdown)."""
    metadata = {
        k: MetadataValue.float(v) if isinstance(v, float) else v
        for k, v in verdict.metadata.items()
    }
    if verdict.problems:
        metadata["problems"] = MetadataValue.md(verdict.problems_markdown())
    return AssetCheckResult(
        passed=verdict.passed,
        metadata=metadata,
        severity=AssetCheckSeverity.WARN if verdict.warn_only else AssetCheckSeverity.ERROR,
        description=verdict.description,
    )


def evaluation_result(
    pipeline: BoundPipeline, warn_voi: float, warn_are: float, sample_blocks: int
) -> AssetCheckResult:
    """The ``evaluation`` check of ``segments``: VOI and ARE against the ground truth."""
    return as_check_result(check_evaluation(pipeline, warn_voi, warn_are, sample_blocks))


def run_partition_keys(tags: dict[str, str], grid: BlockGrid) -> list[str]:
    """The partitions a run covers, from its tags; every partition if it has none.

    Parameters
    ----------
    tags : dict
        The run's tags (``dagster/partition`` or the partition range tags).
    grid : BlockGrid

    Returns
    -------
    list of str
        Partition keys in grid order.
    """
    keys = grid.partition_keys
    if PARTITION_NAME_TAG in tags and tags[PARTITION_NAME_TAG] in keys:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start in keys and end in keys:
        return keys[keys.index(start) : keys.index(end) + 1]
    return list(keys)


def run_phase(run_id: str) -> float:
    """A number in [0, 1) fixed by the run id: where this run's check samples fall."""
    return int(run_id.replace("-", "")[:8] or "0", 16) / 2**32


def build_pipeline_checks(pipeline: BoundPipeline) -> list[AssetChecksDefinition]:
    """The asset checks of one pipeline (what the config's outputs allow)."""
    config = pipeline.config
    grid = pipeline.grid
    name = config.name

    def key(asset: str) -> AssetKey:
        return AssetKey([name, asset])

    def on_run_blocks(check, context: AssetCheckExecutionContext) -> AssetCheckResult:
        """``check`` over the blocks of the run's partitions, sampled with the run's phase."""
        keys = run_partition_keys(dict(context.run.tags), grid)
        return as_check_result(check(pipeline, keys, run_phase(context.run.run_id)))

    @asset_check(
        asset=key("fragments"),
        name="fragment_ids_unique",
        blocking=True,
        description="Fragment ids are unique across blocks: each block uses only its own id "
        "range, in the array and in SQL. Blocks of the run's partitions (at most "
        "check_sample_blocks, spread out).",
    )
    def fragment_ids_unique(context: AssetCheckExecutionContext) -> AssetCheckResult:
        return on_run_blocks(check_fragment_ids, context)

    @asset_check(
        asset=key("fragment_nodes"),
        name="nodes_match_fragments",
        blocking=True,
        description="Per block, SQL nodes and array fragments have the same ids and sizes. "
        "Blocks of the run's partitions (at most check_sample_blocks, spread out).",
    )
    def nodes_match_fragments(context: AssetCheckExecutionContext) -> AssetCheckResult:
        return on_run_blocks(check_nodes_match_fragments, context)

    checks = [fragment_ids_unique, nodes_match_fragments]
    if config.lut_path is not None:

        @asset_check(
            asset=key("lut"),
            name="lut_covers_fragments",
            blocking=True,
            description="Every fragment (SQL node) is in the LUT exactly once. Full.",
        )
        def lut_covers_fragments(context: AssetCheckExecutionContext) -> AssetCheckResult:
            return as_check_result(check_lut_covers_fragments(pipeline))

        checks.append(lut_covers_fragments)
    if config.lut_path is not None and config.segments_array is not None:

        @asset_check(
            asset=key("segments"),
            name="segments_match_lut",
            blocking=True,
            description="Every segment id is the LUT's segment of the voxel's fragment. "
            "Blocks of the run's partitions (at most check_sample_blocks, spread out).",
        )
        def segments_match_lut(context: AssetCheckExecutionContext) -> AssetCheckResult:
            return on_run_blocks(check_segments_match_lut, context)

        checks.append(segments_match_lut)
    return checks
