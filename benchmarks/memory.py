"""Peak RSS per worker against volume size: the same block size on a volume 4x larger.

Every step runs in a fresh process that does exactly what a block worker does
(the step's job on every block, one after another, through ``run_blocks``) and
reports its peak RSS (``ru_maxrss``). The global LUT step reads every node and
edge, so it grows with the graph: its bytes per edge are reported instead.

``python benchmarks/memory.py`` writes ``data/bench_quarter.zarr`` (128, 256, 256)
next to the (128, 512, 512) benchmark volume and prints both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import PIPELINE, ROOT, ensure_volume  # noqa: E402

VOLUMES = {"quarter": (128, 256, 256), "full": (128, 512, 512)}
STEPS = ("fragments", "edges", "lut", "segments")


def _status(field: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in bytes.

    Not ``ru_maxrss``: Linux carries it across ``fork``/``exec``, so a child
    would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _maxrss() -> int:
    return _status("VmHWM")


def run_step(container: str, out: str, step: str) -> dict[str, float]:
    """Run one step on every block in this process; return its peak RSS."""
    from volara_assets.config import ExecutorConfig, PipelineConfig
    from volara_assets.ops.agglomerate import agglomerate
    from volara_assets.runtime.bound import BoundPipeline
    from volara_assets.runtime.executors import open_executor, run_blocks
    from volara_assets.runtime.jobs import EdgesJob, FragmentsJob, SegmentsJob
    from volara_assets.storage.lut import save_lut

    config = PipelineConfig.from_yaml(PIPELINE).model_copy(
        update={
            "affinities": f"{container}/affs_noisy",
            "fragments_array": f"{out}/out.zarr/fragments",
            "segments_array": f"{out}/out.zarr/segments",
            "lut_path": f"{out}/lut.npz",
            "db_url": f"sqlite:///{out}/db.sqlite",
        }
    )
    p = BoundPipeline(config)
    p.prepare_outputs()
    grid = p.grid
    base = _status("VmRSS")
    result: dict[str, float] = {"blocks": grid.num_blocks, "baseline": base}
    if step == "lut":
        store = p.graph.store()
        nodes, edges = store.read_nodes(), store.read_edges()
        params = config.require("lut")
        save_lut(config.lut_path, agglomerate(nodes.ids, edges, params.weights))
        result.update(edges=len(edges), nodes=len(nodes.ids))
    else:
        job = {
            "fragments": lambda: FragmentsJob(config, grid, p.affinities, p.fragments, p.graph),
            "edges": lambda: EdgesJob(config, grid, p.affinities, p.fragments, p.graph),
            "segments": lambda: SegmentsJob(grid, p.fragments, p.segments, p.lut),
        }[step]()
        with open_executor(ExecutorConfig(kind="serial")) as pool:
            for outcome in run_blocks(pool, job, range(grid.num_blocks)):
                if outcome.error:
                    raise RuntimeError(outcome.error)
    result["peak"] = _maxrss()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/memory.py")
    parser.add_argument("--step", choices=STEPS)
    parser.add_argument("--container")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.step:  # child mode
        print(json.dumps(run_step(args.container, args.out, args.step)))
        return 0

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, shape in VOLUMES.items():
        container = ROOT / "data" / ("bench.zarr" if name == "full" else f"bench_{name}.zarr")
        ensure_volume(container, shape)
        out = ROOT / "data" / f"memory_{name}"
        shutil.rmtree(out, ignore_errors=True)
        results[name] = {}
        for step in STEPS:
            proc = subprocess.run(
                [sys.executable, __file__, "--step", step, "--container", str(container),
                 "--out", str(out)],
                check=True, capture_output=True, text=True, cwd=ROOT,
            )
            results[name][step] = json.loads(proc.stdout.strip().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)

    mib = 2**20
    print("peak RSS of one worker process running every block of a step, block (32, 128, 128):")
    for step in STEPS:
        q, f = results["quarter"][step], results["full"][step]
        line = (f"  {step:>10}: {VOLUMES['quarter']} {q['blocks']:.0f} blocks "
                f"{q['peak'] / mib:6.0f} MiB | {VOLUMES['full']} {f['blocks']:.0f} blocks "
                f"{f['peak'] / mib:6.0f} MiB | ratio {f['peak'] / q['peak']:.3f}")
        print(line + f" (after imports {f['baseline'] / mib:.0f} MiB)")
    for name in VOLUMES:
        r = results[name]["lut"]
        per_edge = (r["peak"] - r["baseline"]) / max(r["edges"], 1)
        print(f"  lut ({name}): {r['edges']:.0f} edges, {r['nodes']:.0f} nodes, "
              f"{per_edge:.0f} bytes per edge above the process baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
