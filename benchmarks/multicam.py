#!/usr/bin/env python3
"""Several cameras on one accelerator: what `edged run` with a `cameras:` list delivers per
camera and in total, against one camera and the bare interpreter, on this machine.

    python benchmarks/multicam.py [--threads 2] [--cameras 1,2,4] [--phase-seconds 15] [--json]

Same model file (the shipped yolov3-tiny int8, `inference.delegate: cpu`) and thread count
throughout; every camera reads the bundled clip under its own name (cam0, cam1, ...):
  invoke     bare interpreter invoke loop, unpaced (the physical limit), and paced at the total
             rate of each paced run below (sleep between invokes; p50 of the invoke time)
  unpaced    `realtime: false` on every camera (decoded as fast as taken): the accelerator is the
             bottleneck; aggregate det/s, per-camera fps and their spread
  paced      `realtime: true` with a per-camera rate of min(clip fps, 0.5 x bare fps / cameras)
             (rounded down to a rate the clip delivers evenly; `fps_limit` when below the clip's
             own rate): capture-to-receipt latency per camera (the message's ts_ns vs the
             subscriber's clock)
For every run: the daemon's RSS (VmRSS, sampled every second), the `process/` status's
inference_load, and the number of "model ... via ..." lines in its log (one model per process).
Prints one table, then the issue's targets as PASS/MISS lines (measured, never asserted); with
--json, one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import yaml
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pipeline import Run, bare_invoke, free_port, warm_detector  # noqa: E402

from edged.media import SAMPLE_CLIP  # noqa: E402
from edged.models import DEFAULT_MODEL  # noqa: E402

STARTUP_TIMEOUT_S = 120.0  # model load + first frame
ALL_CAMERAS_TIMEOUT_S = 30.0  # after the first det message, until every camera has sent one


class DaemonFailed(Exception):
    """The daemon exited or never published: the run has no figures."""


def clip_fps() -> float:
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    cap.release()
    return fps if 0 < fps < 1000 else 25.0


def paced_rate(clip: float, bare_fps: float, cameras: int) -> tuple[float, float | None]:
    """(per-camera fps, fps_limit or None): at most min(clip, half the capacity shared by the
    cameras), and a whole fraction clip/k of the clip's rate so a paced file delivers it evenly.
    fps_limit's minimum gap is then k - 0.5 frame periods: every k-th frame passes even when the
    capture thread wakes a few ms late (a gap of exactly k periods would skip one on jitter)."""
    want = min(clip, 0.5 * bare_fps / cameras)
    k = max(1, math.ceil(clip / want - 1e-9))
    return clip / k, (None if k == 1 else round(clip / (k - 0.5), 3))


def paced_invoke(threads: int, rates: list[float], seconds: float) -> dict[float, dict[str, float]]:
    """The bare invoke at each total rate: sleep to the next due time, invoke, time it."""
    det = warm_detector(threads)
    out: dict[float, dict[str, float]] = {}
    for rate in sorted(set(rates)):
        period = 1.0 / rate
        times: list[float] = []
        next_due = time.monotonic()
        end = next_due + seconds
        while next_due < end:
            delay = next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            det.invoke()
            times.append((time.perf_counter() - t0) * 1000)
            next_due += period
        out[rate] = {"rate_fps": rate, "invokes": len(times),
                     "p50_ms": statistics.median(times),
                     "p90_ms": float(np.percentile(times, 90))}
    del det
    return out


class MultiRun(Run):
    """`edged run` with a generated `cameras:` config (log in a file), and a SUB socket on
    `det/` and `process/`. Reuses Run's endpoint and rss_mb."""

    def __init__(self, tmp: Path, threads: int, cameras: int, realtime: bool,
                 fps_limit: float | None) -> None:
        self.port = free_port()
        self.names = [f"cam{i}" for i in range(cameras)]
        cams: list[dict[str, Any]] = []
        for name in self.names:
            cam: dict[str, Any] = {"name": name, "source": str(SAMPLE_CLIP),
                                   "realtime": realtime}
            if fps_limit is not None:
                cam["fps_limit"] = fps_limit
            cams.append(cam)
        cfg = {"cameras": cams,
               "inference": {"threads": threads, "delegate": "cpu"},
               "publish": {"endpoints": [self.endpoint]},
               "log_level": "info"}  # info: the "model ... via ..." line is counted
        mode = "realtime" if realtime else "unpaced"
        self.config_path = tmp / f"multicam-{cameras}-{mode}-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log_path = self.config_path.with_suffix(".log")
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config",
                                      str(self.config_path)], cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"det/")
        self.sub.setsockopt(zmq.SUBSCRIBE, b"process/")
        self.sub.setsockopt(zmq.RCVHWM, 100000)
        self.sub.connect(self.endpoint)
        self.exit_code: int | None = None
        self.first_seen_s: dict[str, float] = {}

    def _alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise DaemonFailed(f"edged exited with code {code}:\n{self.log_tail()}")

    def wait_for_cameras(self) -> None:
        """Until every camera has published (or some never do: they count as 0 fps)."""
        t0 = time.monotonic()
        deadline = t0 + STARTUP_TIMEOUT_S
        while set(self.first_seen_s) != set(self.names):
            now = time.monotonic()
            if now > deadline:
                if not self.first_seen_s:
                    raise DaemonFailed(f"no det message within {STARTUP_TIMEOUT_S:.0f} s:\n"
                                       f"{self.log_tail()}")
                return  # some cameras never published: measured as 0 fps, not waited for
            self._alive()
            if self.sub.poll(200):
                topic, payload = self.sub.recv_multipart()
                if topic.startswith(b"det/"):
                    cam = json.loads(payload).get("camera")
                    if cam in self.names and cam not in self.first_seen_s:
                        self.first_seen_s[cam] = time.monotonic() - t0
                        if len(self.first_seen_s) == 1:
                            deadline = time.monotonic() + ALL_CAMERAS_TIMEOUT_S

    def collect(self, seconds: float, with_invoke: bool = False) -> dict[str, Any]:
        """Everything received over ``seconds``: per camera the receipt latencies (ms), seqs,
        in-daemon invoke times; wrong topics; process statuses; RSS samples (MB)."""
        lat: dict[str, list[float]] = {n: [] for n in self.names}
        seqs: dict[str, list[int]] = {n: [] for n in self.names}
        inv: list[float] = []
        total: list[float] = []
        bad_topics: list[str] = []
        other_cameras: dict[str, int] = {}
        procs: list[dict[str, Any]] = []
        rss: list[float] = []
        start = time.monotonic()
        deadline = start + seconds
        next_rss = start
        while (left := deadline - time.monotonic()) > 0:
            if time.monotonic() >= next_rss:
                self._alive()
                try:
                    rss.append(self.rss_mb())
                except OSError:
                    self._alive()
                    raise
                next_rss += 1.0
            if not self.sub.poll(int(min(left, max(next_rss - time.monotonic(), 0.0)) * 1000)
                                 + 1):
                continue
            topic, payload = self.sub.recv_multipart()
            now = time.time_ns()
            m = json.loads(payload)
            if topic.startswith(b"process/"):
                if topic != b"process/" or m.get("kind") != "process":
                    bad_topics.append(topic.decode(errors="replace"))
                procs.append(m)
                continue
            cam = m.get("camera")
            if topic != f"det/{cam}/".encode() or m.get("kind") != "detections":
                bad_topics.append(topic.decode(errors="replace"))
            if cam not in lat:
                other_cameras[str(cam)] = other_cameras.get(str(cam), 0) + 1
                continue
            lat[cam].append((now - m["ts_ns"]) / 1e6)
            seqs[cam].append(m["seq"])
            if with_invoke:
                inv.append(m["latency_ms"]["inference"])
                total.append(m["latency_ms"]["total"])
        return {"seconds": seconds, "lat": lat, "seqs": seqs, "invoke": inv, "total": total,
                "bad_topics": bad_topics, "other_cameras": other_cameras, "process": procs,
                "rss": rss}

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join("    | " + ln for ln in self.log_text().splitlines()[-lines:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code = self.proc.returncode
        self.sub.close(linger=0)
        self.ctx.term()
        self._log.close()
        return self.exit_code


def model_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "model " in ln and " via " in ln]


def problem_lines(log: str) -> list[str]:
    keys = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Exception", "internal error")
    return [ln for ln in log.splitlines() if any(k in ln for k in keys)]


def summarize(run: MultiRun, c: dict[str, Any]) -> dict[str, Any]:
    secs = c["seconds"]
    cams: dict[str, Any] = {}
    for name in run.names:
        lat, seqs = c["lat"][name], c["seqs"][name]
        cams[name] = {
            "fps": len(lat) / secs, "messages": len(lat),
            "latency_p50_ms": statistics.median(lat) if lat else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if lat else None,
            "seq_gaps": sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1),
            "first_message_s": run.first_seen_s.get(name)}
    fps = [v["fps"] for v in cams.values()]
    mean = statistics.fmean(fps)
    p50s = [v["latency_p50_ms"] for v in cams.values() if v["latency_p50_ms"] is not None]
    p99s = [v["latency_p99_ms"] for v in cams.values() if v["latency_p99_ms"] is not None]
    loads = [p["inference_load"] for p in c["process"]
             if isinstance(p.get("inference_load"), (int, float))]
    proc_fps = [p["fps_out"] for p in c["process"] if isinstance(p.get("fps_out"), (int, float))]
    last_proc = c["process"][-1] if c["process"] else {}
    return {
        "cameras": cams,
        "aggregate_fps": sum(fps),
        "per_camera_fps_min": min(fps), "per_camera_fps_max": max(fps),
        "per_camera_fps_mean": mean,
        "spread": (max(fps) - min(fps)) / mean if mean > 0 else None,
        "latency_p50_ms_worst": max(p50s) if p50s else None,
        "latency_p50_ms_best": min(p50s) if p50s else None,
        "latency_p99_ms_worst": max(p99s) if p99s else None,
        "pipeline_invoke_p50_ms": statistics.median(c["invoke"]) if c["invoke"] else None,
        "pipeline_total_p50_ms": statistics.median(c["total"]) if c["total"] else None,
        "pipeline_total_p99_ms": float(np.percentile(c["total"], 99)) if c["total"] else None,
        "loadavg_1min_after": os.getloadavg()[0],
        "seq_gaps": sum(v["seq_gaps"] for v in cams.values()),
        "bad_topics": sorted(set(c["bad_topics"])), "bad_topic_messages": len(c["bad_topics"]),
        "other_cameras": c["other_cameras"],
        "process_messages": len(c["process"]),
        "inference_load_median": statistics.median(loads) if loads else None,
        "process_fps_out_median": statistics.median(proc_fps) if proc_fps else None,
        "process_cameras": last_proc.get("cameras"),
        "process_state": last_proc.get("state"),
        "rss_mb_max": max(c["rss"]) if c["rss"] else None,
        "rss_mb_median": statistics.median(c["rss"]) if c["rss"] else None,
    }


def one_run(tmp: Path, args: argparse.Namespace, cameras: int, realtime: bool,
            fps_limit: float | None) -> dict[str, Any]:
    res: dict[str, Any] = {"cameras_n": cameras, "realtime": realtime, "fps_limit": fps_limit}
    run: MultiRun | None = None
    try:
        run = MultiRun(tmp, args.threads, cameras, realtime, fps_limit)
        res["config"] = str(run.config_path)
        res["log"] = str(run.log_path)
        run.wait_for_cameras()
        run.collect(args.warmup)
        res.update(summarize(run, run.collect(args.phase_seconds, with_invoke=True)))
    except DaemonFailed as e:
        res["error"] = str(e)
    finally:
        if run is not None:
            res["exit_code"] = run.stop()
            log = run.log_text()
            res["model_lines"] = model_lines(log)
            res["model_loads"] = len(res["model_lines"])
            res["log_problems"] = problem_lines(log)[:20]
    return res


# --- output ------------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, fmt)
    return str(v)


def _verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "MISS")


def checks(out: dict[str, Any], counts: list[int]) -> list[dict[str, Any]]:
    un, pc = out["unpaced"], out["paced"]
    res: list[dict[str, Any]] = []

    def ok(key: str, n: int, d: dict[str, Any]) -> bool:
        return key in d.get(str(n), {}) and d[str(n)].get(key) is not None

    base = un.get("1", {}).get("aggregate_fps") if ok("aggregate_fps", 1, un) else None
    for n in counts:
        if n < 2:
            continue
        agg = un[str(n)].get("aggregate_fps") if ok("aggregate_fps", n, un) else None
        passed = None if base is None or agg is None else agg >= 0.9 * base
        res.append({"check": f"unpaced aggregate, {n} cameras >= 0.9 x 1 camera",
                    "passed": passed,
                    "measured": f"{_f(agg)} det/s vs 0.9 x {_f(base)} = "
                                f"{_f(None if base is None else 0.9 * base)}"
                                + ("" if base is None or agg is None
                                   else f" ({agg / base:.2f} x)")})
    for mode, d in (("unpaced", un), ("paced", pc)):
        for n in counts:
            if n < 2:
                continue
            sp = d[str(n)].get("spread") if ok("spread", n, d) else None
            mean = d[str(n)].get("per_camera_fps_mean")
            res.append({"check": f"{mode} per-camera fps spread, {n} cameras <= 10 % of the "
                                 "mean (equal weights)",
                        "passed": None if sp is None else sp <= 0.10,
                        "measured": f"{_f(None if sp is None else sp * 100)} % "
                                    f"(min {_f(d[str(n)].get('per_camera_fps_min'))}, max "
                                    f"{_f(d[str(n)].get('per_camera_fps_max'))}, mean "
                                    f"{_f(mean)} fps)"})
    for n in counts:
        r = pc[str(n)]
        p50 = r.get("latency_p50_ms_worst")
        bare = out["paced_invoke"].get(str(n), {}).get("p50_ms")
        if p50 is None or bare is None:
            res.append({"check": f"paced latency, {n} camera(s)", "passed": None,
                        "measured": "no figures"})
            continue
        strict = bare + 5
        res.append({"check": f"paced per-camera p50, {n} camera(s) <= paced bare invoke p50 + 5 ms",
                    "passed": p50 <= strict,
                    "measured": f"worst camera {p50:.2f} ms vs {bare:.2f} + 5 = {strict:.2f} ms"})
        if n > 1:
            period = 1000 / r["per_camera_rate"]
            loose = strict + period
            res.append({"check": f"paced per-camera p50, {n} cameras <= paced bare invoke p50 + "
                                 "5 ms + one frame period (cameras contend)",
                        "passed": p50 <= loose,
                        "measured": f"worst camera {p50:.2f} ms vs {strict:.2f} + "
                                    f"{period:.1f} = {loose:.2f} ms"})
    top = max(counts)
    if 1 in counts and top > 1:
        for mode, d in (("unpaced", un), ("paced", pc)):
            a, b = d["1"].get("rss_mb_max"), d[str(top)].get("rss_mb_max")
            res.append({"check": f"{mode} RSS with {top} cameras <= 1.5 x RSS with 1",
                        "passed": None if a is None or b is None else b <= 1.5 * a,
                        "measured": f"{_f(b)} MB vs 1.5 x {_f(a)} = "
                                    f"{_f(None if a is None else 1.5 * a)} MB"})
    for mode, d in (("unpaced", un), ("paced", pc)):
        for n in counts:
            loads = d[str(n)].get("model_loads")
            res.append({"check": f"{mode}, {n} camera(s): one model loaded",
                        "passed": None if loads is None else loads == 1,
                        "measured": f"{_f(loads)} 'model ... via ...' log line(s)"})
    return res


def print_table(out: dict[str, Any], counts: list[int]) -> None:
    inv = out["invoke"]
    print(f"edged multi-camera benchmark: {out['machine']['cpus']} CPUs, {out['threads']} "
          f"threads, {out['model']}, delegate cpu; clip {out['clip_fps']:.1f} fps; phases "
          f"{out['phase_seconds']:.0f} s after {out['warmup_seconds']:.0f} s warm-up; load "
          f"average at start {out['loadavg_1min_start']:.2f}")
    print(f"bare invoke (unpaced): p50 {inv['median_ms']:.2f} ms, p90 {inv['p90_ms']:.2f} ms "
          f"-> {inv['fps']:.1f} fps")
    for n in counts:
        r = out["paced"][str(n)]
        lim = r["fps_limit"]
        p = out["paced_invoke"][str(n)]
        print(f"paced, {n} camera(s): {r['per_camera_rate']:.2f} fps each "
              f"(fps_limit {'none, the clip' + chr(39) + 's own rate' if lim is None else lim}), "
              f"total {n * r['per_camera_rate']:.1f} fps = "
              f"{n * r['per_camera_rate'] / inv['fps'] * 100:.0f} % of capacity; bare invoke at "
              f"that pace: p50 {p['p50_ms']:.2f} ms, p90 {p['p90_ms']:.2f} ms")
    cols = [("unpaced", n) for n in counts] + [("paced", n) for n in counts]
    heads = [f"{m} {n}" for m, n in cols]
    w = 11
    print()
    print(f"{'cameras (mode, count)':<34}" + "".join(f"{h:>{w}}" for h in heads))

    def row(label: str, get: Any, always: bool = False) -> None:
        """One metric across the runs; a run without figures shows "error" unless always."""
        cells = []
        for m, n in cols:
            r = out[m][str(n)]
            cells.append(get(r) if always or "aggregate_fps" in r else "error")
        print(f"{label:<34}" + "".join(f"{c:>{w}}" for c in cells))

    def vs_one(r: dict[str, Any]) -> float | None:
        one = out["paced" if r["realtime"] else "unpaced"].get("1", {}).get("aggregate_fps")
        agg = r.get("aggregate_fps")
        return None if agg is None or not one else float(agg / one)

    row("per-camera rate set (fps)", lambda r: "max" if not r["realtime"]
        else _f(r.get("per_camera_rate"), ".2f"), always=True)
    row("aggregate det/s", lambda r: _f(r.get("aggregate_fps")))
    row("  x 1 camera", lambda r: _f(vs_one(r), ".2f"))
    row("  x bare invoke fps", lambda r: _f(
        None if r.get("aggregate_fps") is None else r["aggregate_fps"] / out["invoke"]["fps"],
        ".2f"))
    row("per-camera fps min", lambda r: _f(r.get("per_camera_fps_min")))
    row("per-camera fps max", lambda r: _f(r.get("per_camera_fps_max")))
    row("fairness spread %", lambda r: _f(
        None if r.get("spread") is None else r["spread"] * 100))
    row("latency p50 ms, best camera", lambda r: _f(r.get("latency_p50_ms_best"), ".2f"))
    row("latency p50 ms, worst camera", lambda r: _f(r.get("latency_p50_ms_worst"), ".2f"))
    row("latency p99 ms, worst camera", lambda r: _f(r.get("latency_p99_ms_worst"), ".2f"))
    row("in-daemon invoke p50 ms", lambda r: _f(r.get("pipeline_invoke_p50_ms"), ".2f"))
    row("in-daemon total p50 ms", lambda r: _f(r.get("pipeline_total_p50_ms"), ".2f"))
    row("in-daemon total p99 ms", lambda r: _f(r.get("pipeline_total_p99_ms"), ".2f"))
    row("bare invoke p50 ms at this pace", lambda r: _f(
        out["invoke"]["median_ms"] if not r["realtime"]
        else out["paced_invoke"][str(r["cameras_n"])]["p50_ms"], ".2f"))
    row("process/ inference_load", lambda r: _f(r.get("inference_load_median"), ".2f"))
    row("process/ fps_out", lambda r: _f(r.get("process_fps_out_median")))
    row("load average (1 min), machine", lambda r: _f(r.get("loadavg_1min_after"), ".2f"))
    row("RSS MB (max)", lambda r: _f(r.get("rss_mb_max")))
    row("RSS MB (median)", lambda r: _f(r.get("rss_mb_median")))
    row("'model ... via' log lines", lambda r: _f(r.get("model_loads")), always=True)
    row("seq gaps (all cameras)", lambda r: _f(r.get("seq_gaps")))
    row("wrong topics / cameras", lambda r: "-" if "aggregate_fps" not in r
        else f"{r['bad_topic_messages']}/{len(r['other_cameras'])}")
    row("log warnings/errors", lambda r: _f(len(r.get("log_problems", []))), always=True)
    row("exit code (SIGTERM)", lambda r: _f(r.get("exit_code")), always=True)
    print()
    print("per camera: fps, capture->subscriber p50/p99 ms")
    for m, n in cols:
        r = out[m][str(n)]
        if "cameras" not in r:
            continue
        parts = [f"{name} {c['fps']:.1f} fps {_f(c['latency_p50_ms'], '.1f')}/"
                 f"{_f(c['latency_p99_ms'], '.1f')}" for name, c in r["cameras"].items()]
        print(f"  {m + ' ' + str(n):<11}" + "; ".join(parts))
    problems = [(m, n, out[m][str(n)]) for m, n in cols
                if "error" in out[m][str(n)] or out[m][str(n)].get("log_problems")
                or out[m][str(n)].get("bad_topics")]
    for m, n, r in problems:
        print(f"\n{m} {n} camera(s): log {r.get('log')}")
        if "error" in r:
            print(f"  ERROR: {r['error']}")
        for t in r.get("bad_topics", []):
            print(f"  unexpected topic: {t}")
        for ln in r.get("log_problems", [])[:8]:
            print(f"  log: {ln}")
    print("\ntargets (issue 12), measured:")
    for c in out["checks"]:
        print(f"  {_verdict(c['passed'])}  {c['check']}: {c['measured']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cameras", default="1,2,4",
                    help="camera counts to run, comma-separated (default 1,2,4)")
    ap.add_argument("--phase-seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="seconds received and discarded before counting (default 3)")
    ap.add_argument("--paced-invoke-seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = sorted({int(x) for x in args.cameras.split(",") if x.strip()})
    if not counts or min(counts) < 1:
        ap.error("--cameras: positive integers, e.g. 1,2,4")

    clip = clip_fps()
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                           "threads": args.threads, "model": DEFAULT_MODEL.name,
                           "clip": SAMPLE_CLIP.name, "clip_fps": clip,
                           "camera_counts": counts, "phase_seconds": args.phase_seconds,
                           "warmup_seconds": args.warmup}
    out["loadavg_1min_start"] = os.getloadavg()[0]
    inv = bare_invoke(args.threads)
    out["invoke"] = inv
    rates = {n: paced_rate(clip, inv["fps"], n) for n in counts}
    paced_inv = paced_invoke(args.threads, [n * rates[n][0] for n in counts],
                             args.paced_invoke_seconds)
    out["paced_invoke"] = {str(n): paced_inv[n * rates[n][0]] for n in counts}

    tmp = Path(tempfile.mkdtemp(prefix="edged-multicam-"))
    out["tmp"] = str(tmp)
    out["unpaced"], out["paced"] = {}, {}
    for n in counts:
        out["unpaced"][str(n)] = one_run(tmp, args, n, realtime=False, fps_limit=None)
        rate, limit = rates[n]
        r = one_run(tmp, args, n, realtime=True, fps_limit=limit)
        r["per_camera_rate"] = rate
        out["paced"][str(n)] = r
        if not args.json:
            print(f"  ran {n} camera(s)", file=sys.stderr, flush=True)
    out["checks"] = checks(out, counts)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print_table(out, counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
