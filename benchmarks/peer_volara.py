"""Run volara's tutorial pipeline (ExtractFrags, AffAgglom, GraphMWS, Relabel) on a zarr.

Our own script against volara's public API; it runs in the separate ``.venv-peer``
(``make bench-peer``) and never imports ``volara_assets``. Prints one JSON line
with per-step seconds and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peer_volara")
    parser.add_argument("--container", required=True, help="demo container, e.g. data/bench.zarr")
    parser.add_argument("--affs", default="affs_noisy")
    parser.add_argument("--out", required=True, help="output folder (wiped first)")
    parser.add_argument("--block-size", nargs=3, type=int, default=[32, 128, 128])
    parser.add_argument("--context", nargs=3, type=int, default=[2, 2, 2])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--serial", action="store_true",
        help="run_blockwise(multiprocessing=False): every block in this process "
        "(else multiprocessing=True with --workers worker processes)",
    )
    args = parser.parse_args(argv)

    from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
    from volara.datasets import Affs, Labels
    from volara.dbs import SQLite
    from volara.logging import set_log_basedir
    from volara.lut import LUT

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # volara keeps worker logs and its blocks-done cache under ./volara_logs; a
    # stale cache would skip every block, so each run gets its own, wiped above.
    set_log_basedir(out / "volara_logs")
    container = Path(args.container).resolve()
    neighborhood = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    affs = Affs(store=container / args.affs, neighborhood=neighborhood)
    frags = Labels(store=out / "fragments")
    segs = Labels(store=out / "segments")
    db = SQLite(
        path=out / "db.sqlite",
        edge_attrs={"zyx_aff": "float"},
    )
    lut = LUT(path=out / "lut.npz")
    array = affs.array("r")
    total_roi = (tuple(array.roi.offset), tuple(array.roi.shape))
    common = {"block_size": tuple(args.block_size), "num_workers": args.workers}
    steps = {
        "fragments": ExtractFrags(
            db=db,
            affs_data=affs,
            frags_data=frags,
            context=tuple(args.context),
            bias=[-0.5, -0.5, -0.5],
            **common,
        ),
        "edges": AffAgglom(
            db=db,
            affs_data=affs,
            frags_data=frags,
            context=tuple(args.context),
            scores={"zyx_aff": neighborhood},
            **common,
        ),
        "lut": GraphMWS(
            db=db, lut=lut, weights={"zyx_aff": (1.0, -0.5)}, roi=total_roi, num_workers=1
        ),
        "segments": Relabel(frags_data=frags, seg_data=segs, lut=lut, **common),
    }
    seconds, windows = {}, {}
    start = time.perf_counter()
    for name, task in steps.items():
        t, wall = time.perf_counter(), time.time()
        task.run_blockwise(multiprocessing=not args.serial)
        seconds[name] = time.perf_counter() - t
        windows[name] = (wall, time.time())
    total = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "tool": "volara serial" if args.serial else f"volara mp{args.workers}",
                "seconds": seconds,
                "windows": windows,
                "total": total,
                "peak_rss_main": own,
                "peak_rss_worker": children,
                "segments": str(out / "segments"),
                "fragments": str(out / "fragments"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
