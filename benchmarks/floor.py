"""The floor of fragment extraction: ``mwatershed.agglom`` alone, and bare array read/write.

For the same blocks as the benchmark pipeline (read ROI = block + context),
times, block by block and alternating so that machine load hits both alike:

* ``read``: the affinities of the read ROI from zarr (uint8, as stored);
* ``agglom``: ``mwatershed.agglom`` on the float64 weights ``affs / 255 + bias``
  (weights built outside the timer: nothing but mutex watershed);
* ``write``: a uint64 write-ROI block into a zarr with the fragments' chunking;
* ``ours``: our whole ``FragmentsJob`` for the block (read, kernel, relabel,
  centroids, zarr write and SQL rows).

Prints medians over the blocks and ``ours`` as a multiple of ``agglom`` and of
``read + agglom + write``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mwatershed as mws
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONTAINER, PIPELINE, ensure_volume  # noqa: E402

from volara_assets.config import PipelineConfig  # noqa: E402
from volara_assets.runtime.bound import BoundPipeline  # noqa: E402
from volara_assets.runtime.jobs import FragmentsJob  # noqa: E402
from volara_assets.storage.arrays import create_array, open_array  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/floor.py")
    parser.add_argument("--every", type=int, default=4, help="time every N-th block")
    args = parser.parse_args(argv)
    ensure_volume()
    tmp = Path(tempfile.mkdtemp(prefix="floor-"))
    try:
        config = PipelineConfig.from_yaml(PIPELINE).model_copy(
            update={
                "fragments_array": str(tmp / "out.zarr" / "fragments"),
                "db_url": f"sqlite:///{tmp / 'db.sqlite'}",
            }
        )
        pipeline = BoundPipeline(config)
        pipeline.prepare_outputs()
        grid = pipeline.grid
        job = FragmentsJob(config, grid, pipeline.affinities, pipeline.fragments, pipeline.graph)
        affs = open_array(CONTAINER / "affs_noisy")
        bare = create_array(
            tmp / "bare.zarr" / "labels", grid.shape, np.uint64, chunks=grid.chunk_shape(),
            offset=grid.offset, voxel_size=grid.voxel_size,
        )
        offsets = [list(o) for o in config.neighborhood]
        bias = np.asarray(config.fragments.bias).reshape(-1, 1, 1, 1)
        job(0)  # warm-up: numba cache load, SQL engine, array handles
        rows = []
        for index in range(0, grid.num_blocks, args.every):
            block = grid.block(index)
            t = time.perf_counter()
            data = affs.read(block.read_roi)
            read = time.perf_counter() - t
            weights = data.astype(np.float64) / 255.0 + bias
            t = time.perf_counter()
            labels = mws.agglom(weights, offsets=offsets)
            agglom = time.perf_counter() - t
            out = np.asarray(labels[block.write_roi.relative_to(block.read_roi.begin).slices])
            out = out.astype(np.uint64)
            t = time.perf_counter()
            bare.write(block.write_roi, out)
            write = time.perf_counter() - t
            t = time.perf_counter()
            job(index)
            ours = time.perf_counter() - t
            rows.append((read, agglom, write, ours))
            print(
                f"block {block.key}: read {read:.3f} s, agglom {agglom:.3f} s, "
                f"write {write:.3f} s, ours {ours:.3f} s",
                flush=True,
            )
        med = [statistics.median(c) for c in zip(*rows, strict=True)]
        voxels = grid.voxels_per_block
        print(f"median over {len(rows)} blocks of {grid.block_size} (+ context {grid.context}):")
        print(f"  read affinities {med[0]:.3f} s, mwatershed.agglom {med[1]:.3f} s "
              f"({voxels / med[1] / 1e6:.2f} Mvox/s), write fragments {med[2]:.3f} s")
        print(f"  our fragment extraction {med[3]:.3f} s per block")
        # Per-block ratios (a block's floor and ours run back to back): load drift cancels.
        vs_agglom = statistics.median(r[3] / r[1] for r in rows)
        vs_floor = statistics.median(r[3] / (r[0] + r[1] + r[2]) for r in rows)
        print(f"  fragment extraction = {vs_agglom:.2f}x mwatershed.agglom alone, "
              f"{vs_floor:.2f}x read+agglom+write (medians of per-block ratios)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
