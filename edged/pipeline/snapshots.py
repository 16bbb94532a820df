"""Event snapshots: the best frame of each event as a JPEG, encoded and written by a thread of
its own, never by the inference thread (a 720p JPEG takes ~5 ms to encode on an x86 core, more on
a Cortex-A53: a frame's whole budget).

The inference thread hands over the frame it already has (capture allocates a new array per
frame, so nothing is copied) and the box; a request for an event replaces its earlier one still
waiting (only its best frame is kept). A picture is the frame, or the box's region with a margin
(``crop``), with the box drawn. It is saved as ``<dir>/<camera>/<event id>.jpg`` when there is a
directory, and published as ``snap/<camera>/`` (topic, JSON header, JPEG). Retention deletes
files older than ``max_age_s`` and, beyond ``max_bytes``, the oldest. A full or read-only disk
stops saving, never events nor publishing: :attr:`SnapshotWriter.state` says why, and the status
carries it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edged.api.messages import SnapMessage, unit, unit_box
from edged.pipeline.stage import StageThread

logger = logging.getLogger(__name__)

PENDING_MAX = 16  # events waiting for their snapshot; beyond, the oldest request is dropped
RETENTION_EVERY_S = 60.0


CROP_MARGIN = 0.25  # a crop adds this share of the box's larger side on every side
CROP_MIN_PX = 96  # and is at least this wide and high (where the frame allows)


@dataclass(frozen=True)
class Request:
    camera: str
    event_id: str
    label: str
    score: float
    image: np.ndarray  # BGR, the frame as captured (not copied: capture never reuses it)
    box: tuple[float, float, float, float]  # normalized x1, y1, x2, y2
    ts_ns: int = 0  # the frame's capture time (Unix epoch ns)


def file_name(camera: str, event_id: str) -> str:
    """The snapshot's path below the directory (what event messages carry)."""
    return f"{camera}/{event_id}.jpg"


def crop_region(box: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int,
                                                                                 int]:
    """Pixel region (x1, y1, x2, y2) of a crop around a normalized box: the box and a margin
    of CROP_MARGIN of its larger side, at least CROP_MIN_PX a side; near an edge the region
    slides inside the frame (a box in a corner keeps its full margin on the inner sides)."""
    x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    pad = CROP_MARGIN * max(x2 - x1, y2 - y1)

    def span(lo: float, hi: float, size: int) -> tuple[int, int]:
        length = min(max(round(hi - lo + 2 * pad), CROP_MIN_PX), size)
        start = min(max(round((lo + hi - length) / 2), 0), size - length)
        return start, start + max(length, 1)

    left, right = span(x1, x2, w)
    top, bottom = span(y1, y2, h)
    return left, top, right, bottom


class SnapshotWriter(StageThread):
    """``directory``: where pictures are saved (None: none are, they are only published);
    ``publish``: takes each picture as a ``snap/<camera>/`` message (None: not published)."""

    def __init__(self, directory: Path | None, quality: int, max_age_s: float, max_bytes: int,
                 crop: bool = False,
                 publish: Callable[[SnapMessage], None] | None = None) -> None:
        super().__init__("edged-snapshots", daemon=True)
        self.directory = directory
        self._quality = quality
        self._max_age_s = max_age_s
        self._max_bytes = max_bytes
        self.crop = crop  # a reload may change it (read once per picture)
        self._publish = publish
        self._pending: OrderedDict[str, Request] = OrderedDict()  # event id -> newest request
        self._cond = threading.Condition()
        self._seqs: dict[str, int] = {}  # camera -> its next snap seq
        self.written = 0
        self.dropped = 0  # requests replaced by a newer one or dropped when too many wait
        self.failed = 0
        self.state = "ok"  # or why snapshots are not being written

    def request(self, req: Request) -> str | None:
        """Queue ``req`` (never blocks); returns the file name it will have (None: no
        directory)."""
        with self._cond:
            if self._pending.pop(req.event_id, None) is not None:
                self.dropped += 1
            self._pending[req.event_id] = req
            while len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
                self.dropped += 1
            self._cond.notify()
        return file_name(req.camera, req.event_id) if self.directory is not None else None

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

    def _encode(self, req: Request,
                region: tuple[int, int, int, int]) -> np.ndarray | None:
        """The ``region`` of the frame as JPEG bytes (None: OpenCV could not encode it)."""
        h, w = req.image.shape[:2]
        x1, y1, x2, y2 = req.box
        left, top, right, bottom = region
        # the box is drawn on our copy, never on a frame in use
        image = req.image[top:bottom, left:right].copy()
        p1 = (round(x1 * w) - left, round(y1 * h) - top)
        p2 = (round(x2 * w) - left, round(y2 * h) - top)
        size = right - left
        cv2.rectangle(image, p1, p2, (0, 200, 255), max(2, size // 400))
        cv2.putText(image, f"{req.label} {req.score:.2f}", (max(p1[0], 0), max(p1[1] - 6, 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, max(0.4, size / 1600), (0, 200, 255),
                    1 if size < 400 else 2)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        return jpeg if ok else None

    def _write(self, req: Request) -> None:
        crop = self.crop
        h, w = req.image.shape[:2]
        region = crop_region(req.box, w, h) if crop else (0, 0, w, h)
        jpeg = self._encode(req, region)
        saved = self._save(req, jpeg) if self.directory is not None else None
        if jpeg is None or self._publish is None:
            return
        seq = self._seqs.get(req.camera, 0)
        self._seqs[req.camera] = seq + 1
        self._publish(SnapMessage(
            req.camera, seq, req.event_id, req.label, unit(req.score), req.ts_ns,
            unit_box(req.box), crop, region[2] - region[0], region[3] - region[1], saved,
            jpeg=jpeg.tobytes()))

    def _save(self, req: Request, jpeg: np.ndarray | None) -> str | None:
        """Write the file; its name below the directory, or None (the state says why)."""
        assert self.directory is not None
        name = file_name(req.camera, req.event_id)
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        try:
            if jpeg is None:
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
            return None
        self.written += 1
        if self.state != "ok":
            logger.info("snapshots are written again to %s", self.directory)
            self.state = "ok"
        return name

    def _retain(self) -> None:
        """Delete snapshots older than max_age_s, then the oldest beyond max_bytes."""
        if self.directory is None:
            return
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
