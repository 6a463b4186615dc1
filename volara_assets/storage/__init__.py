"""Storage formats: zarr volumes with funlib metadata, the SQL fragment graph, LUT files."""

from volara_assets.storage.arrays import (
    ChunkCache,
    VolumeArray,
    create_array,
    open_array,
)
from volara_assets.storage.graph import ATTR_TYPES, GraphStore, WorldRoi
from volara_assets.storage.lut import LUT_KEY, load_lut, lut_path, save_lut

__all__ = [
    "ATTR_TYPES",
    "ChunkCache",
    "LUT_KEY",
    "GraphStore",
    "VolumeArray",
    "WorldRoi",
    "create_array",
    "load_lut",
    "lut_path",
    "save_lut",
    "open_array",
]
