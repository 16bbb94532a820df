"""Capture: the thread that owns the ``cv2.VideoCapture`` and the latest-frame slot it fills.

Sources: V4L2 devices (``/dev/videoN`` or an index), GStreamer pipelines (need an OpenCV built
with GStreamer, as on NXP BSPs), RTSP/HTTP URLs (FFmpeg) and files (optionally looped and paced
in real time so a file behaves like a camera). When the source fails or stalls the thread closes
it, reports ``source_down`` and reopens it with bounded exponential backoff, forever.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from edged._native import native_lines
from edged.config import CameraConfig, classify_source
from edged.errors import ConfigError
from edged.pipeline.slot import Frame, LatestFrameSlot
from edged.pipeline.stage import StageThread

logger = logging.getLogger(__name__)

MAX_OPEN_MS = 10_000  # a network source's open (connect, DESCRIBE, SETUP, PLAY) at most
_OPEN_LOCK = threading.Lock()  # one source open at a time (see CaptureThread._run)
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://[^/@:\s]*):[^/@\s]*@", re.I)


def shown(text: str) -> str:
    """``text`` (a source, a reason) as logs and status show it: a URL's password is ``***``
    (status messages go to every subscriber, the journal to every admin)."""
    return _USERINFO.sub(r"\1:***@", text)


def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def _open(spec: CameraConfig) -> cv2.VideoCapture:
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
    # The open is bounded harder: OpenCV runs one FFmpeg open at a time per process, so a
    # silent camera's open holds up a reload's new source for as long as it lasts.
    timeout_ms = int(spec.stall_timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, min(max(timeout_ms, 1000), MAX_OPEN_MS),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_N_THREADS, 1]
    return cv2.VideoCapture(spec.source, cv2.CAP_FFMPEG, params)


PROBE_MAX_S = 2.0  # the longest a "why can it not be opened" look may take
MAX_REASON_CHARS = 200

# FFmpeg's own account of a failed open, as it writes it to stderr (under `edged run` these
# lines come back to us through edged._native): "[tcp @ 0x55d2...] Connection to
# tcp://127.0.0.1:8554?timeout=0 failed: Connection refused", "[tcp @ 0x...] Failed to resolve
# hostname cam.local: Name or service not known", "[rtsp @ 0x...] method DESCRIBE failed: 404
# Not Found", "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x...] moov atom not found".
_FFMPEG_LINE = re.compile(r"^\[[\w,.-]+ @ 0x[0-9a-f]+\] (.+)$")
_FFMPEG_CONNECT = re.compile(r"Connection to \w+://([^?/\s]+)\S* failed: (.+)$")
_FFMPEG_RESOLVE = re.compile(r"Failed to resolve hostname (\S+): (.+)$")


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def _ffmpeg_says(native: Sequence[str]) -> str | None:
    """The reason in FFmpeg's last complaint, if it made one."""
    said = [m.group(1).strip() for ln in native if (m := _FFMPEG_LINE.match(ln.strip()))]
    for msg in reversed(said):
        if m := _FFMPEG_CONNECT.search(msg):
            err = m.group(2).strip()
            if err == "Immediate exit requested":  # OpenCV's open timeout interrupted it
                err = "timed out"
            return f"cannot connect to {m.group(1)}: {err}"
        if m := _FFMPEG_RESOLVE.search(msg):
            return f"cannot resolve host {m.group(1)}: {m.group(2).strip()}"
    return said[-1] if said else None


def _resolves(host: str, timeout_s: float, stop: threading.Event) -> str | None:
    """getaddrinfo bounded in time (it has none of its own) and by ``stop``: None if the host
    resolves (or we were stopped), else why not. No connection is made: a probe connection
    would take one of the camera's client slots (a one-client server would serve the probe)."""
    result: list[BaseException | None] = []
    done = threading.Event()

    def work() -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            result.append(None)
        except (OSError, UnicodeError) as e:
            result.append(e)
        done.set()

    threading.Thread(target=work, name="edged-resolve", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(min(0.1, max(deadline - time.monotonic(), 0.0))):
        if stop.is_set():
            return None
        if time.monotonic() >= deadline:
            return f"cannot resolve host {host} (no answer in {timeout_s:g} s)"
    err = result[0]
    if err is None:
        return None
    detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"cannot resolve host {host}: {detail}"


def _why_path(path: str, what: str) -> str:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return f"{what} not found" if what == "file" else f"{path} not found"
    except OSError as e:
        return f"cannot open {path}: {e.strerror or e}"
    if not os.access(p, os.R_OK if what == "file" else os.R_OK | os.W_OK):
        return f"{path}: permission denied"
    if what == "file":
        return "empty file" if st.st_size == 0 else "not a readable video"
    return f"cannot open {path} (busy, or not a capture device)"


def why_cannot_open(spec: CameraConfig, native: Sequence[str] = (),
                    stop: threading.Event | None = None) -> str:
    """Why ``spec.source`` did not open, found out cheaply: the reason reported in status
    instead of a bare "cannot open".

    ``native``: what native code wrote to stderr during the open (``edged._native``
    collects it under ``edged run``): FFmpeg says why a stream failed (refused, unresolvable,
    404, not a video). Besides that, only looks that cost nothing and disturb nobody: a stat of
    a file or device, a host name lookup (at most ~2 s, given up when ``stop`` is set)."""
    kind = classify_source(spec.source)
    said = _ffmpeg_says(native) if kind in ("url", "file") else None
    if kind == "url":
        if said:
            return _short(said if said.startswith("cannot ") else f"cannot open: {said}")
        try:
            host = urlsplit(spec.source).hostname
        except ValueError:
            return "cannot open: not a valid URL"
        timeout_s = min(max(spec.stall_timeout_s, 0.1), PROBE_MAX_S)
        return (host and _resolves(host, timeout_s, stop or threading.Event())) or "cannot open"
    if kind == "file":
        reason = _why_path(spec.source, "file")
        return _short(f"{reason} ({said})") if said and reason == "not a readable video" \
            else reason
    if kind == "v4l2":
        src = spec.source
        return _why_path(f"/dev/video{int(src)}" if src.isascii() and src.isdigit() else src,
                         "device")
    return "cannot open the GStreamer pipeline"


def _size(wh: tuple[int, int]) -> str:
    return f"{wh[0]}x{wh[1]}"


class CaptureThread(StageThread):
    """Owns the VideoCapture; fills ``slot``; calls ``on_state(up: bool, reason)`` when the
    source comes up, goes down, or stays down for another reason.

    ``frame_size``: (width, height) of the last frame the source delivered, before any resize
    to the configured size; None until the first frame. Frames put into the slot have the
    configured size when one is set for a camera/stream (the size detections refer to).
    """

    def __init__(self, spec: CameraConfig, slot: LatestFrameSlot,
                 on_state: Callable[[bool, str], None]) -> None:
        # A daemon thread, against our own rule, for one reason: a read() blocked inside FFmpeg
        # or V4L2 cannot be interrupted, and must not hold the process past a 2 s SIGTERM stop.
        # The capture is released by this thread itself on every normal exit path.
        super().__init__(f"edged-capture/{spec.name}", daemon=True)  # log.py: CAMERA
        self.spec = spec
        self.slot = slot
        self._on_state = on_state
        self.reconnects = 0
        self._seq = 0
        self._up: bool | None = None
        self._reason = ""
        self.frame_size: tuple[int, int] | None = None

    def _state(self, up: bool, reason: str) -> None:
        """Report a change: up/down, or a new reason while down (reconnects failing now for
        another reason than the one that took the source down)."""
        if self._stop.is_set():
            return  # a stopped capture (replaced by a reload) says nothing any more
        if up == self._up and (up or reason == self._reason):
            return
        flipped = up != self._up
        self._up = up
        self._reason = "" if up else reason
        if up:
            logger.info("%s: source %s is up", self.spec.name, shown(self.spec.source))
        elif flipped:
            logger.warning("%s: source %s is down: %s", self.spec.name,
                           shown(self.spec.source), shown(reason))
        else:
            logger.warning("%s: source %s is still down: %s", self.spec.name,
                           shown(self.spec.source), shown(reason))
        self._on_state(up, reason)

    def _check_size(self, image: np.ndarray, is_file: bool) -> None:
        """One warning per change of the size the source delivers, and when it is not the
        configured size (the frame is then resized)."""
        size = (int(image.shape[1]), int(image.shape[0]))
        if size == self.frame_size:
            return
        old, self.frame_size = self.frame_size, size
        if old is not None:
            logger.warning("%s: source %s changed resolution from %s to %s", self.spec.name,
                           shown(self.spec.source),
                           _size(old), _size(size))
        want = (self.spec.width, self.spec.height)
        if want[0] and want[1] and not is_file and size != want:
            logger.warning("%s: source %s delivers %s, not the configured %dx%d: resized",
                           self.spec.name, shown(self.spec.source), _size(size), want[0], want[1])

    def _run(self) -> None:
        backoff = self.spec.reconnect_initial_s
        kind = classify_source(self.spec.source)
        while not self._stop.is_set():
            # (No probe connection first to keep a silent host from holding the open lock: a
            # camera or server taking one client, like ffmpeg -listen 1, would lose it to us.)
            reason = self._open_and_pump(kind)
            if self._stop.is_set():
                break
            if reason is None:
                continue
            if self._up:
                backoff = self.spec.reconnect_initial_s  # it worked for a while: start over
            self._state(False, reason)
            self.reconnects += 1
            logger.debug("%s: reconnecting to %s in %.2f s", self.spec.name,
                         shown(self.spec.source), backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.spec.reconnect_max_s)

    def _open_and_pump(self, kind: str) -> str | None:
        """Open the source and read it until it fails; returns why it ended (None: it cannot
        ever open, which was reported, and waited on)."""
        native: list[str] = []
        # OpenCV runs one FFmpeg open at a time per process: a capture stopped by a reload
        # must not queue behind a silent camera's open and then run its own full open while
        # the new capture waits. Ours first, with a stop check once we have it. V4L2 and
        # GStreamer sources do not go through FFmpeg and never wait for it.
        ffmpeg = kind in ("url", "file")
        while ffmpeg and not _OPEN_LOCK.acquire(timeout=0.1):
            if self._stop.is_set():
                return "stopped"
        refused: ConfigError | None = None
        try:
            if self._stop.is_set():
                return "stopped"
            with native_lines() as said:  # FFmpeg's word on why an open fails
                cap = _open(self.spec)
                if not cap.isOpened():
                    native = said()
        except ConfigError as e:
            refused = e
        finally:
            if ffmpeg:
                _OPEN_LOCK.release()
        if refused is not None:  # cannot ever work: report and wait for a reload/stop
            self._state(False, str(refused))
            self._stop.wait(self.spec.reconnect_max_s)
            return None
        try:
            if cap.isOpened():
                return self._pump(cap)
            if self._stop.is_set():
                return "stopped"
            return why_cannot_open(self.spec, native, self._stop)
        except cv2.error as e:
            return f"OpenCV error: {str(e).strip().splitlines()[-1]}"
        finally:
            cap.release()

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
            # The capture time is the grab's: before decoding/colour conversion (retrieve),
            # resizing and pacing, so latency_ms and a subscriber's age of a frame include them.
            ok = cap.grab()
            mono_ns, ts_ns = time.monotonic_ns(), time.time_ns()
            now = mono_ns / 1e9
            if ok and min_gap and not period and now - last_put < min_gap:
                self._state(True, "")
                continue  # over fps_limit: not even converted (a paced file's turn is below)
            image = cap.retrieve()[1] if ok else None
            if image is None or image.size == 0:
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
            self._check_size(image, is_file)
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
                    # a paced file's frame is "grabbed" when it is released, as a camera's
                    waited_ns = time.monotonic_ns() - mono_ns
                    mono_ns, ts_ns, now = mono_ns + waited_ns, ts_ns + waited_ns, \
                        now + waited_ns / 1e9
                else:
                    next_due = time.monotonic()
            if min_gap and now - last_put < min_gap:
                continue
            if self._stop.is_set():
                break  # replaced by a reload during the read: its frames count nowhere
            last_put = now
            frame = Frame(image, self._seq, ts_ns, mono_ns)
            self._seq += 1
            self.slot.put(frame)
        return "stopped"
