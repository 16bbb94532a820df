"""How fast this machine is, measured once per test session, and deadlines derived from it.

Tests never assert a throughput, a rate or a latency (those are figures for ``benchmarks/``).
They wait for events -- a message, a state, N messages -- and give up after a deadline that
comes from the measured speed of *this* machine under *its current* load, with room for that
load to get worse while the session runs:

    deadline = FLOOR_S + slack * (base_s + n_frames * per-frame cost)

How the speed is measured (``measure()``): a fresh Python process does what ``edged run`` does
before its first frame -- imports edged's daemon modules, opens the shipped model with the
daemon's default thread count on the CPU, warms it up -- and the parent times it from spawn to
ready (``start_s``). The same process then runs the whole per-frame path on real frames of the
bundled clip (decode one frame, preprocess, invoke, decode heads + NMS) a few times and reports a
high percentile (``frame_s``). A fresh process, like the daemon, with the daemon's threads, while
whatever else loads the machine keeps running: a CPU hog beside the tests shows up in the figures.

``slack`` is 4 (a loaded 2-core box, load that changes during the session, the test process and
the daemon competing for the same cores); ``EDGED_TEST_SLACK`` multiplies it for machines known
to be slower still (e.g. under qemu-user emulation).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2

from edged.media import SAMPLE_CLIP

REPO = Path(__file__).resolve().parents[1]

SLACK = 4.0
FLOOR_S = 10.0
READY_LINE = "timing: ready"

# Runs in a fresh interpreter: the daemon's imports and start-up, then the per-frame path.
_PROBE = r"""
import json, sys, time
import cv2
import edged.service.daemon  # everything `edged run` imports
from edged.config import default_config
from edged.engine.engine import EngineConfig, open_engine
from edged.engine.detector import DetectParams
from edged.media import SAMPLE_CLIP
from edged.models import DEFAULT_MODEL

cfg = default_config()
cv2.setNumThreads(1)  # as the daemon does
engine = open_engine(DEFAULT_MODEL,
                     EngineConfig(delegate="cpu", threads=cfg.inference.threads))
print("timing: ready", flush=True)
det = engine.detector
cap = cv2.VideoCapture(str(SAMPLE_CLIP))
params = DetectParams()
times = []
for i in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    ok, frame = cap.read()
    if not ok:
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        ok, frame = cap.read()
    geom = det.preprocess(frame)
    t1 = time.perf_counter()
    det.invoke()
    t2 = time.perf_counter()
    det.postprocess(geom, params)
    t3 = time.perf_counter()
    times.append((t3 - t0, t2 - t1))
print(json.dumps({"threads": cfg.inference.threads, "warmup_ms": engine.warmup_ms,
                  "times": times}), flush=True)
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Speed:
    """This machine's measured speed; every deadline a test uses comes from here."""

    start_s: float  # spawn of a fresh process -> model loaded and warmed up (daemon start-up)
    frame_s: float  # p90 of one frame through decode + preprocess + invoke + postprocess
    invoke_s: float  # p90 of the invoke alone (reported, and for tests about inference only)
    threads: int  # the interpreter threads it was measured with (the daemon's default)
    slack: float = SLACK

    def deadline(self, n_frames: int = 0, base_s: float = 0.0,
                 paced_fps: float | None = None) -> float:
        """Seconds to allow for ``base_s`` of fixed waiting (a status interval, a reconnect
        backoff, a clip played in real time) plus ``n_frames`` frames through the pipeline.
        ``paced_fps``: the frames cannot come faster than this (a file paced like a camera)."""
        per_frame = max(self.frame_s, 1.0 / paced_fps if paced_fps else 0.0)
        return round(FLOOR_S + self.slack * (base_s + n_frames * per_frame), 1)

    def start_deadline(self, n_frames: int = 1, base_s: float = 0.0,
                       paced_fps: float | None = None) -> float:
        """A freshly spawned daemon: start-up, then ``n_frames`` frames (and ``base_s``)."""
        return self.deadline(n_frames, base_s + self.start_s, paced_fps)

    def describe(self) -> str:
        return (f"start-up {self.start_s:.2f} s, frame {self.frame_s * 1e3:.1f} ms, invoke "
                f"{self.invoke_s * 1e3:.1f} ms (p90, {self.threads} threads), slack "
                f"x{self.slack:g} + {FLOOR_S:g} s; first det deadline "
                f"{self.start_deadline():.1f} s")


PROBE_TIMEOUT_S = 600.0  # a probe that takes longer is broken, not slow


def measure(runs: int = 25) -> Speed:
    """Measure once (a few seconds); see the module docstring."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as errf:
        # stderr to a file: a chatty runtime cannot fill a pipe nobody reads; the timer ends
        # a probe that hangs instead of hanging the whole session.
        proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(runs + 3)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=errf, text=True)
        killer = threading.Timer(PROBE_TIMEOUT_S, proc.kill)
        killer.start()
        assert proc.stdout is not None
        start_s = None
        result = None
        try:
            for line in proc.stdout:
                if line.strip() == READY_LINE:
                    start_s = time.monotonic() - t0
                elif line.startswith("{"):
                    result = json.loads(line)
            proc.wait()
        finally:
            killer.cancel()
        errf.seek(0)
        err = errf.read()
    if proc.returncode != 0 or start_s is None or result is None:
        raise RuntimeError(f"timing probe failed (exit {proc.returncode}): {err[-2000:]}")
    frames = [t for t, _ in result["times"][3:]]  # the first few frames warm caches up
    invokes = [t for _, t in result["times"][3:]]
    slack = SLACK * float(os.environ.get("EDGED_TEST_SLACK", "1"))
    return Speed(start_s=start_s, frame_s=_percentile(frames, 90),
                 invoke_s=_percentile(invokes, 90), threads=int(result["threads"]), slack=slack)


@dataclass(frozen=True)
class Clip:
    """The bundled clip's own timing (it may be replaced; never hard-code 25 fps or 5.3 s)."""

    fps: float
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


@cache
def sample_clip() -> Clip:
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if not (0 < fps < 1000 and frames > 0):
        raise RuntimeError(f"{SAMPLE_CLIP}: cannot read fps/frame count ({fps}, {frames})")
    return Clip(fps, frames)
