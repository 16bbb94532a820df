"""The capture → inference hand-off: a size-1 slot where the newest frame wins."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edged.pipeline.stats import PipelineStats


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    seq: int  # capture sequence number, from 0, across reconnects
    ts_ns: int  # wall clock at the grab (time.time_ns)
    mono_ns: int  # monotonic clock at the grab (time.monotonic_ns)


class LatestFrameSlot:
    """A size-1 hand-off: the newest frame replaces an unconsumed one. Every frame put and every
    frame replaced is counted in ``stats`` (the one place those counts live).

    ``cond``: a condition shared by the slots of every camera, so one inference worker can wait
    for a frame from any of them (:meth:`take` and :attr:`ready`, under that condition)."""

    def __init__(self, stats: PipelineStats, cond: threading.Condition | None = None) -> None:
        self._cond = cond or threading.Condition()  # frame put: wakes the consumer
        self._taken = threading.Condition()  # frame taken: wakes this slot's producer only
        self._frame: Frame | None = None
        self._stats = stats

    @property
    def cond(self) -> threading.Condition:
        return self._cond

    @property
    def ready(self) -> bool:
        """A frame is waiting (read under ``cond`` to act on it)."""
        return self._frame is not None

    def take(self) -> Frame | None:
        """The waiting frame, if any, without waiting; the caller holds ``cond``."""
        frame, self._frame = self._frame, None
        if frame is not None:
            with self._taken:  # a capture waiting in wait_taken(), and no other camera's
                self._taken.notify_all()
        return frame

    def put(self, frame: Frame) -> None:
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()  # the consumer (one worker waits on a shared condition)
        self._stats.frame_in(replaced)

    def wait_taken(self, timeout_s: float) -> bool:
        """Wait until the slot is empty (the last frame was taken); True if it is."""
        with self._taken:
            if self._frame is not None:
                self._taken.wait_for(lambda: self._frame is None, timeout_s)
            return self._frame is None

    def get(self, timeout_s: float) -> Frame | None:
        """The newest frame, waiting up to ``timeout_s``; None on timeout."""
        with self._cond:
            if self._frame is None:
                self._cond.wait_for(lambda: self._frame is not None, timeout_s)
            return self.take()
