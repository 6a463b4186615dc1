"""volara's tutorial on volara_assets: the same code with ``volara`` replaced by ``volara_assets``.

Differences from the tutorial, all in data preparation and display: the volume
comes from ``volara_assets.demo.make_volume`` (nothing is downloaded) instead of
scikit-image's ``cells3d``, its ground-truth labels are the generated cells
(which touch, so they are not the connected components of the mask), and the
``imshow`` figures are left out. Every step runs as a Dagster materialization in
the instance described in ``volara_assets.blockwise.pipeline``.

Environment: ``VOLARA_TUTORIAL_SHAPE`` (``z,y,x``, default ``60,256,256``; z must
exceed 30, the slice the tutorial inspects) and ``VOLARA_TUTORIAL_KEEP=1`` to keep
``cells3d.zarr`` instead of cleaning up.
"""

import os
import pprint

import numpy as np
from funlib.geometry import Coordinate
from funlib.persistence import prepare_ds

from volara_assets.demo import make_volume
from volara_assets.tmp import seg_to_affgraph

shape = tuple(int(s) for s in os.environ.get("VOLARA_TUTORIAL_SHAPE", "60,256,256").split(","))

# Generate the data (the tutorial downloads cells3d here)
volume = make_volume(shape, seed=0)
cell_data = volume["raw"]

# Handle metadata
offset = Coordinate(0, 0, 0)
voxel_size = Coordinate(290, 260, 260)
axis_names = ["c^", "z", "y", "x"]
units = ["nm", "nm", "nm"]

# Create the zarr array with appropriate metadata
cell_array = prepare_ds(
    "cells3d.zarr/raw",
    cell_data.shape,
    offset=offset,
    voxel_size=voxel_size,
    axis_names=axis_names,
    units=units,
    mode="w",
    dtype=np.uint8,
)

# Save the cell data to the zarr array
cell_array[:] = cell_data

# Save the pseudo ground truth mask
mask_array = prepare_ds(
    "cells3d.zarr/mask",
    cell_data.shape[1:],
    offset=offset,
    voxel_size=voxel_size,
    axis_names=axis_names[1:],
    units=units,
    mode="w",
    dtype=np.uint8,
)
mask_array[:] = volume["mask"]

# Save the labels (generated cells; the tutorial labels connected components of the mask)
labels_array = prepare_ds(
    "cells3d.zarr/labels",
    cell_data.shape[1:],
    offset=offset,
    voxel_size=voxel_size,
    axis_names=axis_names[1:],
    units=units,
    mode="w",
    dtype=volume["labels"].dtype,
)
labels_array[:] = volume["labels"]

# Generate affinity graph
affs_array = prepare_ds(
    "cells3d.zarr/affs",
    (3,) + cell_data.shape[1:],
    offset=offset,
    voxel_size=voxel_size,
    axis_names=["offset^"] + axis_names[1:],
    units=units,
    mode="w",
    dtype=np.uint8,
)
affs_array[:] = seg_to_affgraph(labels_array[:], nhood=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]) * 255

# Generating Supervoxels

from volara_assets.blockwise import ExtractFrags  # noqa: E402
from volara_assets.datasets import Affs, Labels  # noqa: E402
from volara_assets.dbs import SQLite  # noqa: E402

# Configure your db
db = SQLite(
    path="cells3d.zarr/db.sqlite",
    edge_attrs={
        "zyx_aff": "float",
    },
)

# Configure your arrays
affinities = Affs(
    store="cells3d.zarr/affs",
    neighborhood=[Coordinate(1, 0, 0), Coordinate(0, 1, 0), Coordinate(0, 0, 1)],
)
fragments = Labels(store="cells3d.zarr/fragments")

# Extract Fragments
extract_frags = ExtractFrags(
    db=db,
    affs_data=affinities,
    frags_data=fragments,
    block_size=(20, 100, 100),
    context=(2, 2, 2),
    bias=[-0.5, -0.5, -0.5],
)
extract_frags.run_blockwise(multiprocessing=False)

# Fragment Graph

fragment_graph = db.open("r").read_graph(cell_array.roi)
print(f"Number of fragments generated: {len(fragment_graph.nodes)}")
print("Some sample fragments: ")
pprint.pp(list(fragment_graph.nodes(data=True))[100:105])

# Merging Fragments

print(f"Number of edges in our fragment graph: {len(fragment_graph.edges)}")

# Computing Edges

from volara_assets.blockwise import AffAgglom  # noqa: E402

# Affinity Agglomeration across blocks
aff_agglom = AffAgglom(
    db=db,
    affs_data=affinities,
    frags_data=fragments,
    block_size=(20, 100, 100),
    context=(2, 2, 2),
    scores={"zyx_aff": affinities.neighborhood},
)
aff_agglom.run_blockwise(multiprocessing=False)

fragment_graph = db.open("r").read_graph(cell_array.roi)
print(f"Number of fragments: {len(fragment_graph.nodes)}")
print(f"Number of edges: {len(fragment_graph.edges)}")
print("Some sample edges: ")
pprint.pp(list(fragment_graph.edges(data=True))[100:105])

# Global Matching and Segmentation

from volara_assets.blockwise import GraphMWS  # noqa: E402
from volara_assets.lut import LUT  # noqa: E402

# Global MWS
roi = fragments.array("r").roi
global_mws = GraphMWS(
    db=db,
    roi=(roi.offset, roi.shape),
    lut=LUT(path="cells3d.zarr/lut"),
    weights={"zyx_aff": (1.0, -0.5)},
)
global_mws.run_blockwise(multiprocessing=False)

# Relabeling Fragments

from volara_assets.blockwise import Relabel  # noqa: E402

segments = Labels(store="cells3d.zarr/segments")

# Relabel fragments to segments using lut
relabel = Relabel(
    frags_data=fragments,
    seg_data=segments,
    lut=LUT(path="cells3d.zarr/lut"),
    block_size=(20, 100, 100),
)
relabel.run_blockwise(multiprocessing=False)

# Evaluation on slice 30

s_to_l = {}
false_merges = 0
l_to_s = {}
false_splits = 0
for s, l in zip(segments.array("r")[30].flat, labels_array[30].flat):  # noqa: E741, B905
    if s not in s_to_l:
        s_to_l[s] = l
    elif s_to_l[s] != l:
        false_merges += 1
        print(f"Falsely merged labels: ({l}, {s_to_l[s]}) with segment {s}")
    if l not in l_to_s:
        l_to_s[l] = s
    elif l_to_s[l] != s:
        false_splits += 1
        print(f"Falsely split label: {l} into segments ({s}, {l_to_s[l]})")

print("False merges: ", false_merges)
print("False splits: ", false_splits)
print("Accuracy: ", (len(s_to_l) - (false_merges + false_splits)) / len(s_to_l))

# Cleaning Up (volara_assets writes no log folder: runs live in the Dagster instance)

if os.environ.get("VOLARA_TUTORIAL_KEEP") != "1":
    import shutil

    shutil.rmtree("cells3d.zarr")
