"""Fragment extraction against its floor: our kernel, ``mwatershed.agglom``, bare array I/O.

For the same blocks as the benchmark pipeline (read ROI = block + context),
block by block and alternating so that machine load hits both alike:

* ``read``: the affinities of the read ROI from zarr (uint8, as stored);
* ``numba``: our kernel, ``ops.mutex_watershed.mutex_watershed`` on those uint8
  affinities and the bias (what ``extract_fragments`` with ``engine: numba``
  runs; its ordering work is inside the timer);
* ``agglom``: ``mwatershed.agglom`` on the float64 weights ``affs / 255 + bias``
  (weights built outside the timer: nothing but mutex watershed);
* ``write``: a uint64 write-ROI block into a zarr with the fragments' chunking;
* ``ours``: our whole ``FragmentsJob`` for the block (read, kernel, relabel,
  centroids, zarr write and SQL rows) with the pipeline's engine.

Peak memory of each kernel: per block and kernel, a forked child counts its
input as resident, resets the kernel's high-water mark (``/proc/self/clear_refs``)
and runs the kernel once; the figure is the peak RSS above that baseline, so
Rust and numba allocations count alike (tracemalloc sees neither).

Prints medians over the blocks and the per-block ratios agglom / numba.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mwatershed as mws
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONTAINER, PIPELINE, ensure_volume  # noqa: E402

from volara_assets.config import PipelineConfig  # noqa: E402
from volara_assets.ops.mutex_watershed import mutex_watershed  # noqa: E402
from volara_assets.runtime.bound import BoundPipeline  # noqa: E402
from volara_assets.runtime.jobs import FragmentsJob  # noqa: E402
from volara_assets.storage.arrays import create_array, open_array  # noqa: E402


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(kernel: Callable[[np.ndarray], object], data: np.ndarray) -> int:
    """Peak RSS (bytes) of ``kernel(data)`` above its resident input, in a forked child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, exit without any cleanup of the parent's
        try:
            os.close(read_fd)
            float(np.add.reduce(data, axis=None))  # fault the input in: it is not the kernel's
            # Free heap pages inherited from the parent are resident already, so a
            # kernel reusing them would look free of charge: give them back first.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current RSS
            base = _status_kib("VmRSS")
            kernel(data)
            os.write(write_fd, str((_status_kib("VmHWM") - base) * 1024).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        text = f.read()
    os.waitpid(pid, 0)
    if not text:
        raise RuntimeError("peak_memory: the child reported nothing")
    return int(text)


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
        bias_values = list(config.fragments.bias)
        bias = np.asarray(bias_values).reshape(-1, 1, 1, 1)

        def numba(data: np.ndarray) -> np.ndarray:
            return mutex_watershed(data, offsets, bias_values)

        def agglom(weights: np.ndarray) -> np.ndarray:
            return mws.agglom(weights, offsets=offsets)

        job(0)  # warm-up: numba cache load, SQL engine, array handles
        numba(affs.read(grid.block(0).read_roi))
        rows = []
        for n, index in enumerate(range(0, grid.num_blocks, args.every)):
            block = grid.block(index)
            t = time.perf_counter()
            data = affs.read(block.read_roi)
            read = time.perf_counter() - t
            weights = data.astype(np.float64) / 255.0 + bias
            times = {}
            # Alternate which kernel goes first, so neither always runs on a warm cache.
            for name in (("numba", "agglom") if n % 2 == 0 else ("agglom", "numba")):
                t = time.perf_counter()
                labels = numba(data) if name == "numba" else agglom(weights)
                times[name] = time.perf_counter() - t
                if name == "agglom":
                    slices = block.write_roi.relative_to(block.read_roi.begin).slices
                    out = np.asarray(labels[slices]).astype(np.uint64)
            t = time.perf_counter()
            bare.write(block.write_roi, out)
            write = time.perf_counter() - t
            t = time.perf_counter()
            job(index)
            ours = time.perf_counter() - t
            mem_numba = peak_memory(numba, data)
            mem_agglom = peak_memory(agglom, weights)
            rows.append(
                (read, times["numba"], times["agglom"], write, ours, mem_numba, mem_agglom)
            )
            print(
                f"block {block.key}: read {read:.3f} s, numba {times['numba']:.3f} s, "
                f"agglom {times['agglom']:.3f} s, write {write:.3f} s, ours {ours:.3f} s; "
                f"peak memory numba {mem_numba / 2**20:.1f} MiB, "
                f"agglom {mem_agglom / 2**20:.1f} MiB",
                flush=True,
            )
        med = [statistics.median(c) for c in zip(*rows, strict=True)]
        voxels = grid.voxels_per_block
        print(f"median over {len(rows)} blocks of {grid.block_size} (+ context {grid.context}):")
        print(f"  read affinities {med[0]:.3f} s, write fragments {med[3]:.3f} s")
        print(f"  kernel time: numba {med[1]:.3f} s ({voxels / med[1] / 1e6:.2f} Mvox/s), "
              f"mwatershed.agglom {med[2]:.3f} s ({voxels / med[2] / 1e6:.2f} Mvox/s)")
        print(f"  kernel peak memory: numba {med[5] / 2**20:.1f} MiB, "
              f"mwatershed.agglom {med[6] / 2**20:.1f} MiB")
        # Per-block ratios (both kernels of a block run back to back): load drift cancels.
        speed = statistics.median(r[2] / r[1] for r in rows)
        memory = statistics.median(r[6] / r[5] for r in rows)
        print(f"  numba vs mwatershed.agglom: {speed:.2f}x faster, {memory:.2f}x less peak "
              "memory (medians of per-block ratios)")
        print(f"  our fragment extraction (engine {config.fragments.engine}) {med[4]:.3f} s "
              f"per block = {statistics.median(r[4] / r[2] for r in rows):.2f}x "
              f"mwatershed.agglom alone, "
              f"{statistics.median(r[4] / (r[0] + r[2] + r[3]) for r in rows):.2f}x "
              "read+agglom+write (medians of per-block ratios)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
