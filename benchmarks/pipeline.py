#!/usr/bin/env python3
"""Pipeline benchmark: what the daemon delivers against what the runtime can do, on this machine.

    python benchmarks/pipeline.py [--threads 2] [--phase-seconds 20] [--soak-seconds 300] [--json]

Phases, all in one run with the same model file and thread count:
  invoke     bare interpreter invoke loop (the physical limit)
  unpaced    `edged run` on the bundled clip, unthrottled: det messages/s at a subscriber
  paced      the clip paced at 25 fps: capture-to-receipt latency (ts_ns of the message vs the
             subscriber's clock)
  subs10     unthrottled again with 10 more connected subscribers (in another process)
  soak       paced 25 fps for --soak-seconds: RSS sampled every 5 s (steady state, growth)
Prints a table and, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged import sidecar  # noqa: E402
from edged.engine.detector import Detector  # noqa: E402
from edged.media import SAMPLE_CLIP  # noqa: E402
from edged.models import DEFAULT_MODEL  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def warm_detector(threads: int) -> Detector:
    """The shipped model on the CPU, an input set and 10 invokes run."""
    spec = sidecar.load(DEFAULT_MODEL)
    path = spec.variant_path("cpu")
    assert path is not None
    det = Detector(spec, path, threads)
    det.preprocess(np.full((720, 1280, 3), 127, np.uint8))
    for _ in range(10):
        det.invoke()
    return det


def bare_invoke(threads: int, runs: int = 300) -> dict[str, float]:
    det = warm_detector(threads)
    times = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        det.invoke()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
            "fps": 1000 / statistics.median(times),
            "cpu_s_per_frame": (time.process_time() - cpu0) / runs}  # all threads of ours


class Run:
    """`edged run` with a generated config, and a SUB socket counting its det messages."""

    def __init__(self, tmp: Path, threads: int, realtime: bool,
                 publish: dict[str, Any] | None = None, **sections: Any) -> None:
        """``sections``: more config sections (events, mqtt)."""
        self.port = free_port()
        cfg = {"camera": {"name": "bench", "source": str(SAMPLE_CLIP), "realtime": realtime},
               "inference": {"threads": threads, "delegate": "cpu"},
               "publish": {"endpoints": [f"tcp://127.0.0.1:{self.port}"], **(publish or {})},
               "log_level": "warning", **sections}
        path = tmp / f"bench-{self.port}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config",
                                      str(path)], cwd=REPO)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"det/")
        self.sub.setsockopt(zmq.RCVHWM, 100000)
        self.sub.connect(self.endpoint)
        if not self.sub.poll(120_000):
            raise SystemExit("edged produced no message within 120 s")
        self.sub.recv_multipart()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def collect(self, seconds: float, with_invoke: bool = False) -> Any:
        """(messages, capture-to-receipt latencies ms, seqs[, invoke ms]) over ``seconds``."""
        n, lat, seqs, inv = 0, [], [], []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sub.poll(int(left * 1000) + 1):
                _, payload = self.sub.recv_multipart()
                now = time.time_ns()
                m = json.loads(payload)
                lat.append((now - m["ts_ns"]) / 1e6)
                seqs.append(m["seq"])
                inv.append(m["latency_ms"]["inference"])
                n += 1
        return (n, lat, seqs, inv) if with_invoke else (n, lat, seqs)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self.sub.close(linger=0)
        self.ctx.term()
        return code


def _subscribers(endpoint: str, count: int, ready: Any, stop: Any) -> None:
    ctx = zmq.Context()
    socks = []
    poller = zmq.Poller()
    for _ in range(count):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(endpoint)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    ready.set()
    while not stop.is_set():
        for s, _ in poller.poll(100):
            s.recv_multipart()
    for s in socks:
        s.close(linger=0)
    ctx.term()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phase-seconds", type=float, default=20.0)
    ap.add_argument("--soak-seconds", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                           "threads": args.threads, "model": DEFAULT_MODEL.name}
    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-"))

    inv = bare_invoke(args.threads)
    out["invoke"] = inv

    run = Run(tmp, args.threads, realtime=False)
    time.sleep(2)
    run.collect(2)
    c0 = run.cpu_s()
    n, _, _ = run.collect(args.phase_seconds)
    unpaced_fps = n / args.phase_seconds
    out["unpaced"] = {"fps": unpaced_fps, "ratio_to_invoke": unpaced_fps / inv["fps"],
                      "cpu_s_per_frame": (run.cpu_s() - c0) / max(n, 1),
                      "rss_mb": run.rss_mb()}
    ready, stop = mp.Event(), mp.Event()
    p = mp.Process(target=_subscribers, args=(run.endpoint, 10, ready, stop))
    p.start()
    ready.wait(30)
    run.collect(2)
    n10, _, _ = run.collect(args.phase_seconds)
    stop.set()
    p.join(10)
    out["subs10"] = {"fps": n10 / args.phase_seconds,
                     "cost": 1 - (n10 / args.phase_seconds) / unpaced_fps}
    run.stop()

    run = Run(tmp, args.threads, realtime=True)
    run.collect(3)
    n, lat, seqs, inv_in_run = run.collect(args.phase_seconds, with_invoke=True)
    gaps = sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1)
    out["paced"] = {"fps": n / args.phase_seconds, "latency_p50_ms": statistics.median(lat),
                    "pipeline_invoke_p50_ms": statistics.median(inv_in_run),
                    "latency_p99_ms": float(np.percentile(lat, 99)), "seq_gaps": gaps,
                    "target_p50_ms": inv["median_ms"] + 5}
    samples = []
    t_end = time.monotonic() + args.soak_seconds
    while time.monotonic() < t_end:
        run.collect(min(5.0, max(t_end - time.monotonic(), 0.01)))
        samples.append(run.rss_mb())
    run.stop()
    steady = samples[len(samples) // 5:] or samples
    out["soak"] = {"seconds": args.soak_seconds, "rss_start_mb": steady[0],
                   "rss_end_mb": steady[-1], "rss_max_mb": max(samples),
                   "growth_mb": steady[-1] - steady[0]}

    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"edged pipeline benchmark: {out['machine']['cpus']} CPUs, {args.threads} threads, "
          f"{out['model']}")
    print(f"  bare invoke           median {inv['median_ms']:.2f} ms -> {inv['fps']:.1f} fps")
    u = out["unpaced"]
    print(f"  edged unthrottled     {u['fps']:.1f} fps published = {u['ratio_to_invoke']:.2f} x "
          f"invoke limit (target >= 0.85); {u['cpu_s_per_frame'] * 1000:.1f} ms CPU/frame")
    s = out["subs10"]
    print(f"  + 10 subscribers      {s['fps']:.1f} fps, cost {s['cost'] * 100:.1f} % "
          "(target < 5 %)")
    pc = out["paced"]
    print(f"  paced 25 fps          capture-to-receipt p50 {pc['latency_p50_ms']:.2f} ms, p99 "
          f"{pc['latency_p99_ms']:.2f} ms; invoke p50 in this run "
          f"{pc['pipeline_invoke_p50_ms']:.2f} ms (target p50 <= bare invoke + 5 = "
          f"{pc['target_p50_ms']:.2f}; in-run invoke + 5 = "
          f"{pc['pipeline_invoke_p50_ms'] + 5:.2f}); {pc['seq_gaps']} seq gaps")
    sk = out["soak"]
    print(f"  soak {sk['seconds']:.0f} s           RSS {sk['rss_start_mb']:.1f} -> "
          f"{sk['rss_end_mb']:.1f} MB (max {sk['rss_max_mb']:.1f}; target <= 200, growth "
          f"{sk['growth_mb']:+.1f} MB, target <= 5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
