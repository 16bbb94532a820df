"""A camera's detections become events, on the inference thread right after each frame (it sees
every inferred frame; subscribers may not): the camera's ``EventTracker`` (edged.core.track)
turns them into start/update/end changes, which go out as ``event/<camera>/`` messages, into the
event history (``EventStore``, a writer thread) and, for a better sighting, to the snapshot
writer (another thread: no JPEG is encoded here).

What runs here per frame is the tracker (~0.1 ms with 20 objects, benchmarks/track.py); the
rest happens only on an event change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from edged.api.messages import EventMessage, Message
from edged.config import CameraConfig, EventsConfig
from edged.core.track import Change, EventRules, EventTracker, Zone
from edged.core.types import Detections
from edged.pipeline.slot import Frame
from edged.pipeline.snapshots import Request, SnapshotWriter
from edged.pipeline.store import EventStore


def rules(cfg: EventsConfig) -> EventRules:
    """The config's rules (what the config does not name keeps edged.core.track's value)."""
    return EventRules(min_hits=cfg.min_hits, window=cfg.window, min_score=cfg.min_score,
                      end_after_s=cfg.end_after_s, stationary_after_s=cfg.stationary_after_s,
                      update_interval_s=cfg.update_interval_s)


def settings_of(events: EventsConfig, cam: CameraConfig) -> tuple[object, ...]:
    """What a camera's tracker is built from: a reload changing it ends the camera's open
    events (``end_reason: reload``) and starts a new tracker."""
    return (rules(events), events.anchor, dict(cam.zones), cam.masks)


class CameraEvents:
    """One camera's event layer. ``publish``: the publisher's queue; ``store`` and
    ``snapshots``: optional (no history file / no snapshot directory)."""

    def __init__(self, camera: str, events: EventsConfig, cam: CameraConfig,
                 publish: Callable[[Message], None], store: EventStore | None,
                 snapshots: SnapshotWriter | None) -> None:
        self.camera = camera
        self.settings = settings_of(events, cam)
        self.tracker = EventTracker(
            default=rules(events), anchor=events.anchor, masks=cam.masks,
            zones=[Zone(name, z["polygon"], z["labels"]) for name, z in cam.zones.items()])
        self._publish = publish
        self._store = store
        self._snapshots = snapshots
        self._seq = 0
        self._snaps: dict[str, str] = {}  # event id -> its snapshot's file name
        # The inference thread updates; a reload or the shutdown closes (other threads).
        self._lock = threading.Lock()
        self._closed = False  # after close_all: a frame still in flight changes nothing

    def on_frame(self, frame: Frame, dets: Detections, labels: Sequence[str], width: int,
                 height: int) -> None:
        """One inferred frame (its detections in pixels of the frame)."""
        boxes = dets.boxes.astype(np.float64) / np.array([width, height, width, height])
        names = [labels[c] if 0 <= c < len(labels) else str(c) for c in dets.class_ids.tolist()]
        with self._lock:
            if self._closed:
                return
            changes = self.tracker.update(frame.ts_ns / 1e9, boxes, dets.scores, names)
            for ch in changes:
                if ch.better_snapshot and self._snapshots is not None:
                    self._snaps[ch.event_id] = self._snapshots.request(Request(
                        self.camera, ch.event_id, str(ch.label), ch.best_score, frame.image,
                        ch.best_box))
                self._emit(ch, frame.ts_ns)

    def close_all(self, ts_ns: int, reason: str) -> int:
        """End every open event (shutdown, camera removed, settings reloaded); later frames
        change nothing."""
        with self._lock:
            self._closed = True
            changes = self.tracker.close_all(ts_ns / 1e9, reason)
            for ch in changes:
                self._emit(ch, ts_ns)
        return len(changes)

    def _emit(self, ch: Change, ts_ns: int) -> None:
        end = ch.kind == "end"
        msg = EventMessage(
            self.camera, self._seq, ch.kind, ch.event_id, str(ch.label),
            ts_ns if not end else round(ch.last_ts * 1e9), round(ch.start_ts * 1e9),
            round(ch.last_ts * 1e9) if end else None,
            round(max((ch.last_ts if end else ts_ns / 1e9) - ch.start_ts, 0.0), 3),
            ch.stationary, round(min(ch.top_score, 1.0), 4),
            tuple(round(min(max(v, 0.0), 1.0), 4) for v in ch.best_box),  # type: ignore[arg-type]
            tuple(ch.zones), tuple(ch.zones_entered), self._snaps.get(ch.event_id),
            ch.end_reason)
        self._seq += 1
        if end:
            self._snaps.pop(ch.event_id, None)
        self._publish(msg)
        if self._store is not None:
            self._store.submit(msg)


