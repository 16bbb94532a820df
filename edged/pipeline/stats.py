"""Pipeline counters and rolling latency percentiles, shared by the worker and the status."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

STAGES = ("preprocess", "inference", "postprocess", "total")


class PipelineStats:
    """Thread-safe: the worker records, the publisher's status callback reads."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._lat = {s: deque[float](maxlen=window) for s in STAGES}
        self.frames_out = 0
        self._rate_mark = (time.monotonic(), 0, 0)  # (t, frames_in, frames_out)

    def record(self, latency_ms: dict[str, float]) -> None:
        with self._lock:
            for s in STAGES:
                self._lat[s].append(latency_ms[s])
            self.frames_out += 1

    def percentiles(self) -> dict[str, dict[str, float]]:
        with self._lock:
            out = {}
            for s, d in self._lat.items():
                if d:
                    p = np.percentile(np.fromiter(d, float), [50, 90, 99])
                    out[s] = {"p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3),
                              "p99": round(float(p[2]), 3)}
            return out

    def rates(self, frames_in: int) -> tuple[float, float]:
        """(fps in, fps out) since the previous call."""
        with self._lock:
            now = time.monotonic()
            t0, in0, out0 = self._rate_mark
            self._rate_mark = (now, frames_in, self.frames_out)
            dt = max(now - t0, 1e-6)
            return max(frames_in - in0, 0) / dt, (self.frames_out - out0) / dt
