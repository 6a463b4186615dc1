"""Side-by-side benchmark: our Dagster pipeline (as ``make demo`` runs it) and volara's.

``python benchmarks/bench.py ours`` runs our pipeline ``--repeats`` times on the
(128, 512, 512) noisy demo volume through ``dagster asset materialize
--partition-range`` with an on-disk instance, and prints per step seconds,
voxels/s and peak RSS, the process wall time and the Dagster overhead (wall
minus the seconds spent inside block kernels and I/O, which every partition
records as ``seconds`` metadata), then medians.

``python benchmarks/bench.py pair --peer-python .venv-peer/bin/python --workers 1 2``
alternates ours and volara (``benchmarks/peer_volara.py`` in volara's own venv)
A B A B, prints the ratio ours / volara per pair and its median, and the VOI/ARE
of both segmentations against the ground truth and between each other. At 1
worker volara runs both ways, ``run_blockwise(multiprocessing=False)`` and
``multiprocessing=True`` with one worker, and the ratio is against the faster of
the two in that pair; at N > 1 workers ours (process pool) meets volara's
``multiprocessing=True`` with N workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = Path(os.environ.get("BENCH_PIPELINE", ROOT / "benchmarks" / "bench.yaml")).resolve()
CONTAINER = ROOT / "data" / "bench.zarr"
OUTPUT = ROOT / "data" / "bench_out"
PEER_OUTPUT = ROOT / "data" / "bench_peer_out"
SHAPE = (128, 512, 512)
STEPS = ("fragments", "edges", "lut", "segments")
SELECT = "bench/fragments,bench/fragment_nodes,bench/edges,bench/lut,bench/segments"


def ensure_volume(path: Path = CONTAINER, shape: tuple[int, int, int] = SHAPE) -> Path:
    """Write the seeded demo container (kept if already written with these parameters)."""
    from volara_assets.demo import write_demo

    return write_demo(path, shape, seed=0)


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` s (main process and largest child)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                main = proc.memory_info().rss
                child = 0
                for c in proc.children(recursive=True):
                    try:
                        child = max(child, c.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.samples.append((time.time(), main, child))
            self._stop.wait(self.interval)

    def peak(self, start: float | None = None, end: float | None = None) -> tuple[int, int]:
        """(main, largest child) peak RSS in bytes between two wall-clock times."""
        rows = [
            (m, c)
            for t, m, c in self.samples
            if (start is None or t >= start) and (end is None or t <= end)
        ]
        if not rows:
            return 0, 0
        return max(r[0] for r in rows), max(r[1] for r in rows)


@dataclass
class RunResult:
    tool: str
    wall: float
    steps: dict[str, float]
    kernel: dict[str, float] = field(default_factory=dict)
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)
    peak_rss: tuple[int, int] = (0, 0)
    workers: int = 1

    @property
    def overhead(self) -> float:
        """Wall time not spent in kernels+I/O; with N workers, block seconds count 1/N."""
        return self.wall - sum(self.kernel.values()) / self.workers


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, RssSampler, str]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with RssSampler(proc.pid) as sampler:
        out, _ = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(out[-5000:])
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return wall, sampler, out


def run_ours(home: Path, workers: int = 1, kind: str = "processes") -> RunResult:
    """One materialization of the whole pipeline as ``make demo`` runs it (``dg launch`` calls
    the same ``dagster asset materialize`` implementation in process)."""
    shutil.rmtree(OUTPUT, ignore_errors=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "VOLARA_PIPELINES": str(PIPELINE),
        "VOLARA_EXECUTOR": kind if workers > 1 else "serial",
        "VOLARA_NUM_WORKERS": str(workers),
    }
    bin_dir = Path(sys.executable).parent
    keys_range = subprocess.run(
        [sys.executable, "-m", "volara_assets.orchestration.report", "range", str(PIPELINE)],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()
    cmd = [
        str(bin_dir / "dagster"), "asset", "materialize", "-m", "volara_assets.definitions",
        "--select", SELECT, "--partition-range", keys_range,
    ]
    wall, sampler, _ = _run(cmd, env)
    steps, kernel, windows = _instance_stats(home)
    rss = {s: sampler.peak(*windows[s]) for s in windows}
    return RunResult("ours", wall, steps, kernel, rss, sampler.peak(), workers)


def _instance_stats(
    home: Path,
) -> tuple[dict[str, float], dict[str, float], dict[str, tuple[float, float]]]:
    """Step seconds, kernel seconds (per-partition ``seconds`` metadata) of the latest run."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import AssetKey, DagsterInstance

    instance = DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    steps, windows = {}, {}
    for stat in instance.get_run_step_stats(run.run_id):
        name = stat.step_key.split("__", 1)[1]
        steps[name] = stat.end_time - stat.start_time
        windows[name] = (stat.start_time, stat.end_time)
    kernel = {}
    for name in STEPS:
        records = instance.fetch_materializations(AssetKey(["bench", name]), limit=1000).records
        seconds = 0.0
        for rec in records:
            if rec.run_id != run.run_id:
                continue
            value = rec.asset_materialization.metadata.get("seconds")
            seconds += float(value.value) if value is not None else 0.0
        kernel[name] = seconds
    return steps, kernel, windows


def run_peer(peer_python: str, workers: int = 1, serial: bool = False) -> RunResult:
    """One run of volara's tutorial pipeline (``peer_volara.py``) in its own venv.

    ``serial``: ``run_blockwise(multiprocessing=False)``; else ``multiprocessing=True``
    with ``workers`` worker processes.
    """
    cmd = [
        peer_python, str(ROOT / "benchmarks" / "peer_volara.py"),
        "--container", str(CONTAINER), "--out", str(PEER_OUTPUT), "--workers", str(workers),
    ]
    if serial:
        cmd.append("--serial")
    wall, sampler, out = _run(cmd, dict(os.environ))
    report = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    windows = {k: tuple(v) for k, v in report["windows"].items()}
    rss = {s: sampler.peak(*windows[s]) for s in windows}
    return RunResult(report["tool"], wall, report["seconds"], {}, rss, sampler.peak(), workers)


def _mb(b: int) -> str:
    return f"{b / 2**20:.0f}"


def print_run(r: RunResult, voxels: int) -> None:
    print(f"  {r.tool}: wall {r.wall:.1f} s, peak RSS main {_mb(r.peak_rss[0])} MiB, "
          f"largest worker {_mb(r.peak_rss[1])} MiB")
    for s in STEPS:
        sec = r.steps.get(s, float("nan"))
        main, child = r.rss.get(s, (0, 0))
        k = f", in kernels+I/O {r.kernel[s]:.1f} s" if s in r.kernel else ""
        print(f"    {s:>10}: {sec:7.2f} s  {voxels / sec / 1e6:7.2f} Mvox/s  "
              f"RSS main {_mb(main)} / worker {_mb(child)} MiB{k}")
    if r.kernel:
        print(f"    Dagster overhead (wall - kernels+I/O / {r.workers} workers): "
              f"{r.overhead:.1f} s")


def print_medians(runs: list[RunResult], voxels: int) -> None:
    tool = runs[0].tool
    med = statistics.median
    print(f"median of {len(runs)} {tool} runs: wall {med(r.wall for r in runs):.1f} s")
    for s in STEPS:
        sec = med(r.steps[s] for r in runs)
        rss = med(max(r.rss.get(s, (0, 0))) for r in runs)
        print(f"    {s:>10}: {sec:7.2f} s  {voxels / sec / 1e6:7.2f} Mvox/s  "
              f"peak RSS {_mb(int(rss))} MiB")
    if runs[0].kernel:
        print(f"    kernels+I/O {med(sum(r.kernel.values()) for r in runs):.1f} s, "
              f"Dagster overhead {med(r.overhead for r in runs):.1f} s")


def compare_segmentations() -> None:
    """VOI/ARE of ours and volara's against the ground truth, and between them."""
    from volara_assets.ops.metrics import evaluate
    from volara_assets.storage.arrays import open_array

    gt = open_array(CONTAINER / "labels")[...]
    ours = open_array(OUTPUT / "fragments.zarr" / "segments")[...]
    peer = open_array(PEER_OUTPUT / "segments")[...]
    for name, seg in (("ours", ours), ("volara", peer)):
        s = evaluate(seg, gt)
        print(f"  {name:>6} vs ground truth: VOI {s['voi']:.4f} (split {s['voi_split']:.4f}, "
              f"merge {s['voi_merge']:.4f}), ARE {s['are']:.4f}, {s['n_segments']} segments")
    # Both ways round, over every voxel (background included): 0 means identical up to ids.
    both = evaluate(ours, peer.astype(np.uint64) + np.uint64(1))
    print(f"  ours vs volara: VOI {both['voi']:.6f} (split {both['voi_split']:.6f}, "
          f"merge {both['voi_merge']:.6f})")
    print(f"  voxels whose labelling differs up to ids: {_differing_voxels(ours, peer)}")


def _differing_voxels(a: np.ndarray, b: np.ndarray) -> int:
    """Voxels not in the largest overlap of their label in ``a`` (0 iff same partition)."""
    from volara_assets.ops._common import unique_pairs

    ua, ub, _, n = unique_pairs(a.reshape(-1).astype(np.uint64), b.reshape(-1).astype(np.uint64))
    best_a: dict[int, int] = {}
    for x, c in zip(ua.tolist(), n.tolist(), strict=True):
        best_a[x] = max(best_a.get(x, 0), c)
    best_b: dict[int, int] = {}
    for y, c in zip(ub.tolist(), n.tolist(), strict=True):
        best_b[y] = max(best_b.get(y, 0), c)
    return max(a.size - sum(best_a.values()), a.size - sum(best_b.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py")
    parser.add_argument("mode", choices=["ours", "pair"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--kind", default="processes", choices=["processes", "dask"])
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-peer" / "bin" / "python"))
    parser.add_argument("--home", default=str(ROOT / ".bench_home"))
    args = parser.parse_args(argv)

    ensure_volume()
    voxels = int(np.prod(SHAPE))
    home = Path(args.home)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    print(f"volume {SHAPE} = {voxels / 1e6:.1f} Mvoxels, {CONTAINER}/affs_noisy, "
          f"pipeline {PIPELINE.relative_to(ROOT)}")

    if args.mode == "ours":
        by_workers: dict[int, list[RunResult]] = {w: [] for w in args.workers}
        for rep in range(args.repeats):
            for w in args.workers:  # alternated, so drifting load hits every setting alike
                r = run_ours(home, w, args.kind)
                by_workers[w].append(r)
                print(f"rep {rep + 1}, {w} worker(s):")
                print_run(r, voxels)
        for w, runs in by_workers.items():
            print(f"== {w} worker(s) ({args.kind if w > 1 else 'serial'})")
            print_medians(runs, voxels)
        if len(args.workers) > 1:
            base = statistics.median(r.wall for r in by_workers[args.workers[0]])
            for w in args.workers[1:]:
                med = statistics.median(r.wall for r in by_workers[w])
                print(f"speed-up {w} vs {args.workers[0]} worker(s): {base / med:.2f}x")
        return 0

    for w in args.workers:
        run_pairs(args, home, w, voxels)
    return 0


def run_pairs(args: argparse.Namespace, home: Path, w: int, voxels: int) -> None:
    """``--repeats`` alternated pairs at ``w`` workers; ratios against volara's faster mode."""
    # At 1 worker volara can also run without worker processes, which may be
    # faster: run both and compare with the faster one of each pair.
    modes = [True, False] if w == 1 else [False]
    ours_runs: list[RunResult] = []
    peer_runs: dict[bool, list[RunResult]] = {m: [] for m in modes}
    ratios = []
    print(f"== {w} worker(s): ours ({'serial' if w == 1 else args.kind}) vs volara "
          f"({' and '.join('serial' if m else f'multiprocessing, {w} worker(s)' for m in modes)})")
    for rep in range(args.repeats):
        a = run_ours(home, w, args.kind)
        ours_runs.append(a)
        peers = []
        for serial in (modes if rep % 2 == 0 else modes[::-1]):
            b = run_peer(args.peer_python, w, serial)
            peer_runs[serial].append(b)
            peers.append(b)
        best = min(peers, key=lambda r: r.wall)
        ratios.append(a.wall / best.wall)
        walls = ", ".join(f"{b.tool} {b.wall:.1f} s" for b in peers)
        print(f"pair {rep + 1} ({w} worker(s)): ours {a.wall:.1f} s, {walls}; "
              f"ratio against the faster ({best.tool}) {ratios[-1]:.3f}")
        print_run(a, voxels)
        for b in peers:
            print_run(b, voxels)
    print_medians(ours_runs, voxels)
    for runs in peer_runs.values():
        print_medians(runs, voxels)
    print(f"{w} worker(s): ratio ours / faster volara per pair: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")
    compare_segmentations()

if __name__ == "__main__":
    sys.exit(main())
