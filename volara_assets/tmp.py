"""The tutorial's ``from volara_assets.tmp import seg_to_affgraph`` import, kept working."""

from volara_assets.ops.affinities import seg_to_affgraph

__all__ = ["seg_to_affgraph"]
