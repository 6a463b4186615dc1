"""Verification of what the pipeline wrote: fragment ids, nodes, LUT coverage, segments, VOI/ARE.

Each check returns a :class:`Verdict` (plain values, no Dagster); the Dagster
layer (:mod:`volara_assets.orchestration.checks`) turns verdicts into asset
check results.

Cost and scope
--------------
* ``fragment_ids_unique``, ``nodes_match_fragments`` and ``segments_match_lut``
  check **the blocks of the run's partitions** (the partitions just written),
  at most ``check_sample_blocks`` of them, evenly spread (0 = all): one more
  read of what the step wrote, in the Dagster process, so it must stay small
  next to the step on a large run. Where in its stretch each pick falls comes
  from the run id, so successive runs check different blocks. Run on their own
  (no partition in the run), they check the whole volume the same way.
* ``lut_covers_fragments`` is **full**: every node id against the LUT, a sort of
  the id lists (no voxel is read).
* ``evaluation`` (only with ``ground_truth``) is **sampled** on large volumes:
  VOI and ARE over at most ``eval_sample_blocks`` evenly spaced blocks (the
  whole volume when it has fewer blocks, or when the setting is 0), with a
  warning when VOI > ``eval_warn_voi`` or ARE > ``eval_warn_are``.
"""


from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import Block, BlockGrid
from ..ops.fragments import label_counts
from ..ops.metrics import evaluate
from ..ops.relabel import relabel
from .bound import BoundPipeline

__all__ = [
    "Verdict",
    "check_evaluation",
    "check_fragment_ids",
    "check_lut_covers_fragments",
    "check_nodes_match_fragments",
    "check_segments_match_lut",
]

#: At most this many problems are listed in a failed check's metadata.
SHOWN = 20


def _blocks(
    pipeline: BoundPipeline, partition_keys: Sequence[str], phase: float
) -> tuple[list[Block], int]:
    """The blocks to check (sampled) and how many blocks the partitions hold."""
    grid = pipeline.grid
    blocks = [b for k in partition_keys for b in grid.partition_blocks(k)]
    return _evenly(blocks, pipeline.config.check_sample_blocks, phase), len(blocks)


def _evenly(blocks: Sequence[Block], limit: int, phase: float = 0.0) -> list[Block]:
    """At most ``limit`` blocks, one per stretch of ``len(blocks) / limit`` (all if limit is 0).

    ``phase`` in [0, 1) is where in its stretch each pick falls: a run derives it
    from its id, so successive runs over the same partitions check different
    blocks, and a defect in any block is eventually caught.
    """
    if limit <= 0 or len(blocks) <= limit:
        return list(blocks)
    step = len(blocks) / limit
    picks = np.floor((np.arange(limit) + phase % 1.0) * step).astype(int)
    return [blocks[int(i)] for i in np.unique(np.clip(picks, 0, len(blocks) - 1))]


def _scope(grid: BlockGrid, blocks: Sequence[Block], in_run: int) -> dict[str, Any]:
    if in_run == grid.num_blocks:
        scope = "every block" if len(blocks) == in_run else "sampled blocks of the volume"
    else:
        scope = "the run's partitions" if len(blocks) == in_run else "sampled blocks of the run"
    return {
        "blocks_checked": len(blocks),
        "blocks_in_run": in_run,
        "blocks_total": grid.num_blocks,
        "scope": scope,
    }


@dataclass
class Verdict:
    """The outcome of one check.

    ``metadata`` holds plain numbers and strings; ``problems`` lists what failed
    (at most :data:`SHOWN` are meant to be shown); ``warn_only`` marks a check
    whose failure is a warning (the evaluation), not an error.
    """

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warn_only: bool = False
    description: str | None = None

    def problems_markdown(self) -> str:
        """The problems as a Markdown list, cut at :data:`SHOWN` entries."""
        shown = "\n".join(f"- {p}" for p in self.problems[:SHOWN])
        more = len(self.problems) - SHOWN
        return shown + (f"\n- ... and {more} more" if more > 0 else "")


def _result(passed: bool, metadata: dict[str, Any], problems: list[str]) -> Verdict:
    return Verdict(passed=passed, metadata=metadata, problems=problems)


def check_fragment_ids(
    pipeline: BoundPipeline, partition_keys: Sequence[str], phase: float = 0.0
) -> Verdict:
    """Fragment ids are unique across blocks.

    Block ``i`` owns the id range ``base(i) + 1 .. base(i) + voxels_per_block``;
    ranges of different blocks are disjoint, so ids are unique across blocks if
    and only if every block's voxels and SQL nodes use ids of its own range.
    A block holding an id of another block's range is named with the block
    the id belongs to.
    """
    grid = pipeline.grid
    store = pipeline.graph.store()
    blocks, in_run = _blocks(pipeline, partition_keys, phase)
    problems: list[str] = []
    for block in blocks:
        lo = grid.fragment_id_base(block.index) + 1
        hi = lo + grid.voxels_per_block - 1
        ids, _ = label_counts(pipeline.fragments.read(block.write_roi))
        nodes = store.block_nodes(block.index).ids
        for where, found in (("array", ids), ("SQL", nodes)):
            bad = found[(found < lo) | (found > hi)]
            if bad.size:
                owners = sorted(
                    {
                        grid.block(int(i)).key
                        for i in grid.block_of_fragment(bad)
                        if 0 <= int(i) < grid.num_blocks
                    }
                )
                problems.append(
                    f"block {block.key}: {bad.size} ids in the {where} outside its range "
                    f"[{lo}, {hi}] (e.g. {int(bad[0])}; owned by {', '.join(owners) or 'no block'})"
                )
    metadata = _scope(grid, blocks, in_run)
    metadata["bad_blocks"] = len(problems)
    return _result(not problems, metadata, problems)


def check_nodes_match_fragments(
    pipeline: BoundPipeline, partition_keys: Sequence[str], phase: float = 0.0
) -> Verdict:
    """Per block, the SQL nodes and the array's fragments have the same ids and voxel counts."""
    grid = pipeline.grid
    store = pipeline.graph.store()
    blocks, in_run = _blocks(pipeline, partition_keys, phase)
    problems: list[str] = []
    for block in blocks:
        ids, counts = label_counts(pipeline.fragments.read(block.write_roi))
        nodes = store.block_nodes(block.index)
        in_array = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        in_sql = dict(zip(nodes.ids.tolist(), nodes.sizes.tolist(), strict=True))
        missing = sorted(set(in_array) - set(in_sql))
        extra = sorted(set(in_sql) - set(in_array))
        sizes = sorted(i for i in set(in_array) & set(in_sql) if in_array[i] != in_sql[i])
        for what, found in (
            ("fragments without a node", missing),
            ("nodes without voxels", extra),
            ("nodes whose size differs from the voxel count", sizes),
        ):
            if found:
                problems.append(f"block {block.key}: {len(found)} {what} (e.g. {found[0]})")
    metadata = _scope(grid, blocks, in_run)
    metadata["bad_blocks"] = len({p.split(":")[0] for p in problems})
    return _result(not problems, metadata, problems)


def check_lut_covers_fragments(pipeline: BoundPipeline) -> Verdict:
    """Every fragment (SQL node) appears exactly once in the LUT's fragment row."""
    lut = pipeline.lut.load() if pipeline.lut is not None else np.zeros((2, 0), np.uint64)
    nodes = pipeline.graph.store().read_node_ids()
    keys = np.sort(lut[0])
    duplicated = np.unique(keys[1:][keys[1:] == keys[:-1]])
    missing = np.setdiff1d(nodes, keys, assume_unique=False)
    problems = []
    if missing.size:
        problems.append(
            f"{missing.size} of {nodes.size} fragments are not in the LUT "
            f"(e.g. {', '.join(str(int(i)) for i in missing[:5])})"
        )
    if duplicated.size:
        problems.append(
            f"{duplicated.size} fragment ids appear more than once in the LUT "
            f"(e.g. {int(duplicated[0])})"
        )
    metadata = {
        "fragments": int(nodes.size),
        "lut_entries": int(lut.shape[1]),
        "missing": int(missing.size),
        "scope": "every fragment",
    }
    return _result(not problems, metadata, problems)


def check_segments_match_lut(
    pipeline: BoundPipeline, partition_keys: Sequence[str], phase: float = 0.0
) -> Verdict:
    """Per block, every voxel's segment id is the LUT's segment for its fragment."""
    grid = pipeline.grid
    pipeline.config.require("segments_array")
    segments = pipeline.segments
    lut = pipeline.lut.load()
    blocks, in_run = _blocks(pipeline, partition_keys, phase)
    problems: list[str] = []
    wrong_voxels = 0
    for block in blocks:
        expected = relabel(pipeline.fragments.read(block.write_roi), lut)
        found = segments.read(block.write_roi)
        wrong = int(np.count_nonzero(expected != found))
        if wrong:
            wrong_voxels += wrong
            problems.append(f"block {block.key}: {wrong} voxels differ from LUT(fragments)")
    metadata = _scope(grid, blocks, in_run)
    metadata["wrong_voxels"] = wrong_voxels
    return _result(not problems, metadata, problems)


def _sample(grid: BlockGrid, limit: int) -> list[Block]:
    return _evenly(list(grid.blocks()), limit)


def check_evaluation(
    pipeline: BoundPipeline, warn_voi: float, warn_are: float, sample_blocks: int
) -> Verdict:
    """VOI (split + merge) and ARE of the segments against the ground truth.

    Sampled: at most ``sample_blocks`` evenly spaced blocks are read (all when
    the volume has fewer, or ``sample_blocks`` is 0). Fails (with severity
    WARN) when VOI > ``warn_voi`` or ARE > ``warn_are``.
    """
    if pipeline.ground_truth is None:
        raise ValueError("ground_truth: check_evaluation needs a ground truth array")
    grid = pipeline.grid
    blocks = _sample(grid, sample_blocks)
    if len(blocks) == grid.num_blocks:
        roi = grid.volume_roi
        scores = evaluate(pipeline.segments.read(roi), pipeline.ground_truth.read(roi))
    else:
        seg = np.concatenate([pipeline.segments.read(b.write_roi).ravel() for b in blocks])
        gt = np.concatenate([pipeline.ground_truth.read(b.write_roi).ravel() for b in blocks])
        scores = evaluate(seg, gt)
    voi = float(scores["voi_split"] + scores["voi_merge"])
    are = float(scores["are"])
    passed = bool(voi <= warn_voi and are <= warn_are)
    metadata: dict[str, Any] = {k: float(v) for k, v in scores.items()}
    metadata.update(
        {
            "warn_voi": float(warn_voi),
            "warn_are": float(warn_are),
            "blocks_evaluated": len(blocks),
            "blocks_total": grid.num_blocks,
            "scope": "whole volume" if len(blocks) == grid.num_blocks else "sampled blocks",
        }
    )
    return Verdict(
        passed=passed,
        warn_only=True,
        metadata=metadata,
        description=None
        if passed
        else f"VOI {voi:.3f} (warn {warn_voi}), ARE {are:.3f} (warn {warn_are})",
    )
