"""Capture: the thread that owns the ``cv2.VideoCapture`` and the latest-frame slot it fills.

Sources: V4L2 devices (``/dev/videoN`` or an index), GStreamer pipelines (need an OpenCV built
with GStreamer, as on NXP BSPs), RTSP/HTTP URLs (FFmpeg) and files (optionally looped and paced
in real time so a file behaves like a camera). When the source fails or stalls the thread closes
it, reports ``source_down`` and reopens it with bounded exponential backoff, forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edged.errors import ConfigError
from edged.stage import StageThread

logger = logging.getLogger(__name__)

_URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


def classify_source(source: str) -> str:
    """``v4l2`` | ``gstreamer`` | ``url`` | ``file``."""
    s = source.strip()
    if (s.isascii() and s.isdigit()) or s.startswith("/dev/video"):
        return "v4l2"
    if s.startswith("gst:") or " ! " in s:
        return "gstreamer"
    if s.lower().startswith(_URL_SCHEMES):
        return "url"
    return "file"


def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    seq: int  # capture sequence number, from 0, across reconnects
    ts_ns: int  # wall clock at grab (time.time_ns)
    mono_ns: int  # monotonic clock at grab (time.monotonic_ns)


class LatestFrameSlot:
    """A size-1 hand-off: the newest frame replaces an unconsumed one (counted as dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify()

    def wait_taken(self, timeout_s: float) -> bool:
        """Wait until the slot is empty (the last frame was taken); True if it is."""
        with self._cond:
            if self._frame is not None:
                self._cond.wait_for(lambda: self._frame is None, timeout_s)
            return self._frame is None

    def get(self, timeout_s: float) -> Frame | None:
        """The newest frame, waiting up to ``timeout_s``; None on timeout."""
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout_s)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame


@dataclass(frozen=True)
class SourceSpec:
    source: str
    width: int | None = None
    height: int | None = None
    fps_limit: float | None = None
    loop: bool = True
    realtime: bool = True
    stall_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0


def _open(spec: SourceSpec) -> cv2.VideoCapture:
    kind = classify_source(spec.source)
    if kind == "gstreamer":
        if not opencv_has_gstreamer():
            raise ConfigError(
                "camera.source: a GStreamer pipeline needs OpenCV built with GStreamer (the NXP "
                "BSP's python3-opencv has it; PyPI's opencv-python-headless does not)")
        pipeline = spec.source[4:].strip() if spec.source.startswith("gst:") else spec.source
        return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if kind == "v4l2":
        index = spec.source.isascii() and spec.source.isdigit()
        dev: int | str = int(spec.source) if index else spec.source
        cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        if spec.width and spec.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, spec.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, spec.height)
        return cap
    # A stalled network source makes read() fail after stall_timeout_s instead of hanging.
    # One decoder thread: on a 2-core board the cores belong to inference.
    timeout_ms = int(spec.stall_timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(timeout_ms, 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_N_THREADS, 1]
    return cv2.VideoCapture(spec.source, cv2.CAP_FFMPEG, params)


class CaptureThread(StageThread):
    """Owns the VideoCapture; fills ``slot``; calls ``on_state(up: bool, reason)`` on changes."""

    def __init__(self, spec: SourceSpec, slot: LatestFrameSlot,
                 on_state: Callable[[bool, str], None]) -> None:
        # A daemon thread, against our own rule, for one reason: a read() blocked inside FFmpeg
        # or V4L2 cannot be interrupted, and must not hold the process past a 2 s SIGTERM stop.
        # The capture is released by this thread itself on every normal exit path.
        super().__init__("edged-capture", daemon=True)
        self.spec = spec
        self.slot = slot
        self._on_state = on_state
        self.frames = 0  # frames put into the slot
        self.reconnects = 0
        self._seq = 0
        self._up: bool | None = None

    def _state(self, up: bool, reason: str) -> None:
        if up != self._up:
            self._up = up
            if up:
                logger.info("source %s is up", self.spec.source)
            else:
                logger.warning("source %s is down: %s", self.spec.source, reason)
            self._on_state(up, reason)

    def _run(self) -> None:
        backoff = self.spec.reconnect_initial_s
        while not self._stop.is_set():
            try:
                cap = _open(self.spec)
            except ConfigError as e:  # cannot ever work: report and wait for a reload/stop
                self._state(False, str(e))
                self._stop.wait(self.spec.reconnect_max_s)
                continue
            try:
                reason = self._pump(cap) if cap.isOpened() else "cannot open"
            except cv2.error as e:
                reason = f"OpenCV error: {str(e).strip().splitlines()[-1]}"
            finally:
                cap.release()
            if self._stop.is_set():
                break
            if self._up:
                backoff = self.spec.reconnect_initial_s  # it worked for a while: start over
            self._state(False, reason)
            self.reconnects += 1
            logger.debug("reconnecting to %s in %.2f s", self.spec.source, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.spec.reconnect_max_s)

    def _pump(self, cap: cv2.VideoCapture) -> str:
        """Read frames until the source fails, stalls or we are stopped; returns why it ended."""
        is_file = classify_source(self.spec.source) == "file"
        fps = cap.get(cv2.CAP_PROP_FPS) if is_file else 0.0
        period = 1.0 / fps if is_file and self.spec.realtime and 0 < fps < 1000 else 0.0
        # An unpaced file is not live: decode the next frame while inference runs on this one,
        # then wait for the slot instead of decoding frames only to drop them.
        backpressure = is_file and not self.spec.realtime
        min_gap = 1.0 / self.spec.fps_limit if self.spec.fps_limit else 0.0
        next_due = time.monotonic()
        last_put = 0.0
        rewound = False
        while not self._stop.is_set():
            if backpressure and not self.slot.wait_taken(0.2):
                continue
            ok, image = cap.read()
            now = time.monotonic()
            if not ok or image is None or image.size == 0:
                if not is_file:
                    return "read failed or timed out"
                if not self.spec.loop:
                    self._stop.wait(self.spec.reconnect_max_s)  # a finished file stays down
                    return "end of file"
                if rewound:  # rewinding did not give a frame: the file is broken
                    return "cannot read the file"
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                rewound = True
                continue
            rewound = False
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            if self.spec.width and self.spec.height and not is_file and \
                    (image.shape[1], image.shape[0]) != (self.spec.width, self.spec.height):
                image = cv2.resize(image, (self.spec.width, self.spec.height))
            self._state(True, "")
            if period:  # pace a file like a camera
                next_due += period
                delay = next_due - time.monotonic()
                if delay > 0:
                    if self._stop.wait(delay):
                        break
                else:
                    next_due = time.monotonic()
            if min_gap and now - last_put < min_gap:
                continue
            last_put = now
            frame = Frame(image, self._seq, time.time_ns(), time.monotonic_ns())
            self._seq += 1
            self.frames += 1
            self.slot.put(frame)
        return "stopped"
