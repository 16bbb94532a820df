#!/usr/bin/env python3
"""Soak: run `edged run` (bundled clip, paced at 25 fps) for a set time and report RSS drift,
fps drift and message gaps seen by a subscriber.

    python benchmarks/soak.py [--minutes 10] [--threads 2] [--json]

Targets (issue 6): RSS drift < 5 MB, no message gaps, fps within 5 % of the start.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from pipeline import Run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    run = Run(Path(tempfile.mkdtemp(prefix="edged-soak-")), args.threads, realtime=True)
    window = 30.0
    samples = []  # (elapsed s, fps, rss MB)
    seqs: list[int] = []
    t0 = time.monotonic()
    try:
        run.collect(10.0)  # settle
        while time.monotonic() - t0 < args.minutes * 60:
            n, _, s = run.collect(window)
            seqs.extend(s)
            samples.append((time.monotonic() - t0, n / window, run.rss_mb()))
            if not args.json:
                print(f"  {samples[-1][0]:7.0f} s  {samples[-1][1]:6.2f} fps  "
                      f"{samples[-1][2]:7.1f} MB", flush=True)
    finally:
        code = run.stop()
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(seqs) if b != a + 1)
    fps0, fps1 = samples[0][1], samples[-1][1]
    out = {"minutes": args.minutes, "threads": args.threads, "exit_code": code,
           "rss_start_mb": samples[0][2], "rss_end_mb": samples[-1][2],
           "rss_drift_mb": samples[-1][2] - samples[0][2],
           "fps_start": fps0, "fps_end": fps1, "fps_drift_pct": (fps1 - fps0) / fps0 * 100,
           "messages": len(seqs), "lost_messages": gaps}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"soak {args.minutes:g} min: RSS {out['rss_start_mb']:.1f} -> "
              f"{out['rss_end_mb']:.1f} MB (drift {out['rss_drift_mb']:+.1f}, target < 5); "
              f"fps {fps0:.2f} -> {fps1:.2f} ({out['fps_drift_pct']:+.1f} %, target within 5 %);"
              f" {len(seqs)} messages, {gaps} lost (target 0); exit {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
