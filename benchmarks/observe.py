"""Cost of observing the input: a cold observation, a no-change one, and one after a change.

``python benchmarks/observe.py`` observes the (128, 512, 512) benchmark volume's
noisy affinities (``bench.py``'s ``ensure_volume``; a private copy under
``data/observe_bench`` is changed, never the benchmark's input) on the benchmark
grid (blocks (32, 128, 128), context 2; ``--bricks`` for 2 x 2 x 2 partitions),
and prints for each observation the seconds, chunk files stat-ed and read, and
partitions whose version changed. The change sets 1,500 affinity values inside
one chunk file, away from every block face.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, ensure_volume  # noqa: E402

from volara_assets.geometry import BlockGrid, Roi  # noqa: E402
from volara_assets.storage.arrays import open_array  # noqa: E402
from volara_assets.storage.fingerprints import Observation, observe_input  # noqa: E402

WORK = ROOT / "data" / "observe_bench"


def line(label: str, obs: Observation, before: dict[str, str] | None) -> str:
    changed = "" if before is None else f", {sum(before[k] != v for k, v in obs.versions.items())}"
    return (
        f"{label:<22} {obs.seconds:7.3f} s  {obs.chunks} chunk files stat-ed, "
        f"{obs.chunks_read} read ({obs.bytes_read / 2**20:.1f} MiB), "
        f"{obs.partitions_rehashed} partitions rehashed{changed}"
        + ("" if before is None else " versions changed")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bricks", action="store_true", help="2 x 2 x 2 blocks per partition")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    source = ensure_volume() / "affs_noisy"
    WORK.mkdir(parents=True, exist_ok=True)
    affs = WORK / "affs"
    shutil.rmtree(affs, ignore_errors=True)
    shutil.copytree(source, affs)
    cache = WORK / "input_versions.json"
    cache.unlink(missing_ok=True)
    array = open_array(affs, "r+")
    grid = BlockGrid(
        array.spatial_shape,
        (32, 128, 128),
        (2, 2, 2),
        blocks_per_partition=(2, 2, 2) if args.bricks else (1, 1, 1),
    )
    print(
        f"{affs}: shape {array.shape}, chunks {array.spatial_chunks}, "
        f"{len(grid.partition_keys)} partitions"
    )

    cold = observe_input(affs, grid, cache)
    print(line("cold (no cache)", cold, None))
    idle = [observe_input(affs, grid, cache) for _ in range(args.repeats)]
    for obs in idle:
        assert obs.versions == cold.versions
    print(line("no change", idle[0], cold.versions))
    print(f"{'':<22} median {statistics.median(o.seconds for o in idle):.3f} s of {len(idle)}")

    # 1,500 values (3 channels x 10 x 10 x 5) deep inside block z1_y1_x1 and its chunk.
    roi = Roi((45, 180, 180), (10, 10, 5))
    data = array.read(roi)
    data[...] = np.float32(0) if data.dtype.kind == "f" else 0
    assert data.size == 1500
    array.write(roi, data)
    changed = observe_input(affs, grid, cache)
    print(line("one chunk changed", changed, cold.versions))
    again = observe_input(affs, grid, cache)
    print(line("no change after it", again, changed.versions))


if __name__ == "__main__":
    main()
