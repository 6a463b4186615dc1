"""Pure array kernels of the pipeline: no files, no blocks, no Dagster."""

from .affinities import seg_to_affgraph
from .agglomerate import agglomerate
from .edges import edge_scores
from .fragments import extract_fragments, finish_block, fragment_nodes
from .metrics import evaluate, tutorial_accuracy
from .relabel import relabel

__all__ = [
    "agglomerate",
    "edge_scores",
    "evaluate",
    "extract_fragments",
    "finish_block",
    "fragment_nodes",
    "relabel",
    "seg_to_affgraph",
    "tutorial_accuracy",
]
