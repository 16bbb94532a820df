"""The pipeline's counters, in one place: frames in, dropped, out, rolling rates and latencies.

One owner for each count: the latest-frame slot reports every frame handed to it and every
frame it replaced (:meth:`PipelineStats.frame_in`), the inference worker every frame it finished
(:meth:`PipelineStats.record`). The service outlives captures and slots replaced by a reload, so
the counts run since start without any bookkeeping there. Messages the publisher drops are the
publisher's own count (``Publisher.dropped``).

Reading is free of side effects: :meth:`PipelineStats.snapshot` may be called from any thread as
often as wanted (a status on every state change does not skew the next one's rate).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edged.api.messages import STAGES, Latency, Percentiles

RATE_WINDOW_S = 2.0  # fps is averaged over the frames of the last this many seconds
MAX_RATE_SAMPLES = 1024  # timestamps kept per rate (beyond 512 fps the window gets shorter)
LATENCY_WINDOW = 200  # frames the latency percentiles are taken over


@dataclass(frozen=True)
class StatsSnapshot:
    """The counters at one moment. Rates in frames per second over the recent window;
    ``latency_ms``: stage -> percentiles over the last frames (stages with no frame yet are
    absent)."""

    frames_in: int
    frames_dropped: int
    frames_out: int
    fps_in: float
    fps_out: float
    latency_ms: dict[str, Percentiles]
    load: float  # share of the recent window spent inferring these frames (0..1)


def _rate(stamps: tuple[float, ...], now: float, since: float, window_s: float,
          weights: tuple[float, ...] | None = None) -> float:
    """Frames per second over the last ``window_s`` (shorter right after ``since``, the start,
    or when ``stamps``, a bounded history, does not reach back that far); with ``weights`` (one
    per stamp), their sum per second instead."""
    if not stamps:
        return 0.0
    first = bisect.bisect_right(stamps, now - window_s)
    n = len(stamps) - first if weights is None else sum(weights[first:])
    span = window_s
    if first == 0:  # no older stamp: the history may not cover the whole window
        span = min(window_s, now - (stamps[0] if len(stamps) == MAX_RATE_SAMPLES else since))
    return n / span if span > 0 else 0.0


class PipelineStats:
    """Thread-safe: capture threads and the worker count, anyone reads a snapshot.

    ``clock``: monotonic seconds (a test may pass its own)."""

    def __init__(self, window: int = LATENCY_WINDOW, rate_window_s: float = RATE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1 or rate_window_s <= 0:
            raise ValueError(f"window must be >= 1 and rate_window_s > 0, got {window}, "
                             f"{rate_window_s}")
        self._lock = threading.Lock()
        self._clock = clock
        self._started = clock()
        self._rate_window_s = rate_window_s
        self._latency = deque[Latency](maxlen=window)
        self._in_stamps = deque[float](maxlen=MAX_RATE_SAMPLES)
        self._out_stamps = deque[float](maxlen=MAX_RATE_SAMPLES)
        self._busy_s = deque[float](maxlen=MAX_RATE_SAMPLES)  # one per out stamp
        # images inferred for other processes (Frigate): load, not frames
        self._asked_stamps = deque[float](maxlen=MAX_RATE_SAMPLES)
        self._asked_busy_s = deque[float](maxlen=MAX_RATE_SAMPLES)
        self._frames_in = 0
        self._frames_dropped = 0
        self._frames_out = 0

    # --- counting (the owners) --------------------------------------------------------------
    def frame_in(self, replaced: bool) -> None:
        """A frame was handed to a slot; ``replaced``: it replaced one nobody had taken."""
        now = self._clock()
        with self._lock:
            self._frames_in += 1
            self._frames_dropped += replaced
            self._in_stamps.append(now)

    def record(self, latency: Latency) -> None:
        """A frame was inferred, taking ``latency``."""
        now = self._clock()
        with self._lock:
            self._latency.append(latency)
            self._frames_out += 1
            self._out_stamps.append(now)
            self._busy_s.append(latency.total / 1e3)

    def asked(self, latency: Latency) -> None:
        """An image another process asked about was inferred: the worker's load, no frame."""
        now = self._clock()
        with self._lock:
            self._asked_stamps.append(now)
            self._asked_busy_s.append(latency.total / 1e3)

    # --- reading (anyone, no side effects) --------------------------------------------------
    @property
    def frames_out(self) -> int:
        return self._frames_out

    def snapshot(self) -> StatsSnapshot:
        now = self._clock()
        with self._lock:
            ins, outs = tuple(self._in_stamps), tuple(self._out_stamps)
            busy = tuple(self._busy_s)
            asked, asked_busy = tuple(self._asked_stamps), tuple(self._asked_busy_s)
            lat = list(self._latency)
            counts = self._frames_in, self._frames_dropped, self._frames_out
        w = self._rate_window_s
        return StatsSnapshot(*counts, fps_in=_rate(ins, now, self._started, w),
                             fps_out=_rate(outs, now, self._started, w),
                             latency_ms=_percentiles(lat),
                             load=min(_rate(outs, now, self._started, w, busy)
                                      + _rate(asked, now, self._started, w, asked_busy), 1.0))


def _percentiles(lat: list[Latency]) -> dict[str, Percentiles]:
    if not lat:
        return {}
    table = np.array([[getattr(x, s) for s in STAGES] for x in lat], np.float64)
    p = np.percentile(table, [50, 90, 99], axis=0)  # (3, stages)
    return {s: Percentiles(*(round(float(x), 3) for x in p[:, i])) for i, s in enumerate(STAGES)}
