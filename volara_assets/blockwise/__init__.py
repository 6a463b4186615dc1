"""The tutorial's blockwise steps (ExtractFrags, AffAgglom, GraphMWS, Relabel) on Dagster."""

from .pipeline import BlockwiseError, Pipeline, dagster_home, dagster_instance
from .steps import AffAgglom, BlockwiseStep, ExtractFrags, GraphMWS, Relabel

__all__ = [
    "AffAgglom",
    "BlockwiseError",
    "BlockwiseStep",
    "ExtractFrags",
    "GraphMWS",
    "Pipeline",
    "Relabel",
    "dagster_home",
    "dagster_instance",
]
