"""Accuracy of the two fragments engines: the whole pipeline with each, against the ground truth.

Runs the benchmark pipeline (``bench.yaml``, as ``make bench`` does, 1 worker)
once with ``fragments.engine: numba`` and once with ``mwatershed``, and prints
VOI split, VOI merge and ARE of both segmentations against the ground truth of
the (128, 512, 512) noisy volume, and our figures relative to mwatershed's.
The criterion for ``numba`` as the default: each within 2% relative.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main() -> int:
    bench.ensure_volume()
    from volara_assets.ops.metrics import evaluate
    from volara_assets.storage.arrays import open_array

    gt = open_array(bench.CONTAINER / "labels")[...]
    tmp = Path(tempfile.mkdtemp(prefix="engines-"))
    original = yaml.safe_load(bench.PIPELINE.read_text())
    scores = {}
    try:
        for engine in ("numba", "mwatershed"):
            data = dict(original)
            data["fragments"] = {**original["fragments"], "engine": engine}
            # Relative paths in bench.yaml resolve against its folder: keep them so.
            path = bench.PIPELINE.parent / f".engines-{engine}.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            bench.PIPELINE = path
            home = tmp / engine
            home.mkdir()
            shutil.copy(bench.ROOT / "dagster.yaml", home / "dagster.yaml")
            try:
                run = bench.run_ours(home, 1)
            finally:
                path.unlink()
            seg = open_array(bench.OUTPUT / "fragments.zarr" / "segments")[...]
            scores[engine] = evaluate(seg, gt)
            s = scores[engine]
            print(f"{engine:>10}: wall {run.wall:.1f} s, "
                  f"fragments step {run.steps['fragments']:.1f} s; "
                  f"VOI split {s['voi_split']:.4f}, merge {s['voi_merge']:.4f}, "
                  f"ARE {s['are']:.4f}, {s['n_segments']} segments", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, ref = scores["numba"], scores["mwatershed"]
    for key in ("voi_split", "voi_merge", "are"):
        rel = (ours[key] - ref[key]) / ref[key] if ref[key] else float("nan")
        print(f"  {key}: numba {ours[key]:.4f} vs mwatershed {ref[key]:.4f} ({rel:+.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
