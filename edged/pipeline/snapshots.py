"""Event snapshots: the best frame of each event as a JPEG, encoded and written by a thread of
its own, never by the inference thread (a 720p JPEG takes ~5 ms to encode on an x86 core, more on
a Cortex-A53: a frame's whole budget).

The inference thread hands over the frame it already has (capture allocates a new array per
frame, so nothing is copied) and the box; a request for an event replaces its earlier one still
waiting (only its best frame is kept). Files are ``<dir>/<camera>/<event id>.jpg`` with the box
drawn; retention deletes files older than ``max_age_s`` and, beyond ``max_bytes``, the oldest. A
full or read-only disk stops snapshots, never events: :attr:`SnapshotWriter.state` says why, and
the status carries it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edged.pipeline.stage import StageThread

logger = logging.getLogger(__name__)

PENDING_MAX = 16  # events waiting for their snapshot; beyond, the oldest request is dropped
RETENTION_EVERY_S = 60.0


@dataclass(frozen=True)
class Request:
    camera: str
    event_id: str
    label: str
    score: float
    image: np.ndarray  # BGR, the frame as captured (not copied: capture never reuses it)
    box: tuple[float, float, float, float]  # normalized x1, y1, x2, y2


def file_name(camera: str, event_id: str) -> str:
    """The snapshot's path below the directory (what event messages carry)."""
    return f"{camera}/{event_id}.jpg"


class SnapshotWriter(StageThread):
    def __init__(self, directory: Path, quality: int, max_age_s: float, max_bytes: int) -> None:
        super().__init__("edged-snapshots", daemon=True)
        self.directory = directory
        self._quality = quality
        self._max_age_s = max_age_s
        self._max_bytes = max_bytes
        self._pending: OrderedDict[str, Request] = OrderedDict()  # event id -> newest request
        self._cond = threading.Condition()
        self.written = 0
        self.dropped = 0  # requests replaced by a newer one or dropped when too many wait
        self.failed = 0
        self.state = "ok"  # or why snapshots are not being written

    def request(self, req: Request) -> str:
        """Queue ``req`` (never blocks); returns the file name it will have."""
        with self._cond:
            if self._pending.pop(req.event_id, None) is not None:
                self.dropped += 1
            self._pending[req.event_id] = req
            while len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
                self.dropped += 1
            self._cond.notify()
        return file_name(req.camera, req.event_id)

    def stop(self) -> None:
        super().stop()
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        next_retention = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._stop.is_set():
                    self._cond.wait(RETENTION_EVERY_S)
                    break
                req = self._pending.popitem(last=False)[1] if self._pending else None
            if req is not None:
                self._write(req)
            elif self._stop.is_set():
                return  # every pending request written first
            if time.monotonic() >= next_retention:
                self._retain()
                next_retention = time.monotonic() + RETENTION_EVERY_S

    def _write(self, req: Request) -> None:
        image = req.image.copy()  # the box is drawn on our copy, never on a frame in use
        h, w = image.shape[:2]
        x1, y1, x2, y2 = req.box
        p1, p2 = (round(x1 * w), round(y1 * h)), (round(x2 * w), round(y2 * h))
        cv2.rectangle(image, p1, p2, (0, 200, 255), max(2, w // 400))
        cv2.putText(image, f"{req.label} {req.score:.2f}", (p1[0], max(p1[1] - 6, 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, max(0.5, w / 1600), (0, 200, 255), 2)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        path = self.directory / file_name(req.camera, req.event_id)
        tmp = path.with_suffix(".tmp")
        try:
            if not ok:
                raise OSError("JPEG encoding failed")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(jpeg.tobytes())
            os.replace(tmp, path)  # a reader never sees half a JPEG
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # half written on a full disk: never left behind
            self.failed += 1
            why = f"snapshots not written: {path.parent}: {e.strerror or e}"
            if why != self.state:
                logger.error("%s (events go on without them)", why)
            self.state = why
            return
        self.written += 1
        if self.state != "ok":
            logger.info("snapshots are written again to %s", self.directory)
            self.state = "ok"

    def _retain(self) -> None:
        """Delete snapshots older than max_age_s, then the oldest beyond max_bytes."""
        try:
            files = [(p.stat(), p) for p in self.directory.glob("*/*.jpg")]
        except OSError:
            return
        now = time.time()
        keep = []
        for st, p in sorted(files, key=lambda x: x[0].st_mtime):
            if now - st.st_mtime > self._max_age_s:
                p.unlink(missing_ok=True)
            else:
                keep.append((st, p))
        total = sum(st.st_size for st, _ in keep)
        for st, p in keep:
            if total <= self._max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= st.st_size
