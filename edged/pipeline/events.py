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

HEARTBEAT_S = 30.0  # an open event's state reaches the history at least this often


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
                 snapshots: SnapshotWriter | None, seq: int = 0) -> None:
        """``seq``: the camera's next event seq (a reload's new event layer continues it)."""
        self.camera = camera
        self.settings = settings_of(events, cam)
        self.tracker = EventTracker(
            default=rules(events), anchor=events.anchor, masks=cam.masks,
            zones=[Zone(name, z["polygon"], z["labels"]) for name, z in cam.zones.items()])
        self._publish = publish
        self._store = store
        self._snapshots = snapshots
        self.seq = seq
        self._snaps: dict[str, str] = {}  # event id -> its snapshot's file name
        self._offset_ns = 0  # wall clock minus monotonic clock, as of the last frame
        self._heartbeat_mono = 0.0
        # The inference thread updates; a reload or the shutdown closes (other threads).
        self._lock = threading.Lock()
        self._closed = False  # after close_all: a frame still in flight changes nothing

    def on_frame(self, frame: Frame, dets: Detections, labels: Sequence[str], width: int,
                 height: int) -> None:
        """One inferred frame (its detections in pixels of the frame)."""
        boxes = dets.boxes.astype(np.float64) / np.array([width, height, width, height])
        names = [labels[c] if 0 <= c < len(labels) else str(c) for c in dets.class_ids.tolist()]
        mono = frame.mono_ns / 1e9
        with self._lock:
            if self._closed:
                return
            # Tracked on the monotonic clock: an NTP step (a board without an RTC syncs
            # minutes after boot) neither ends every event nor keeps one open for ever.
            # Messages carry wall-clock times, through the offset of this frame.
            self._offset_ns = frame.ts_ns - frame.mono_ns
            self.tracker.wall_offset_s = self._offset_ns / 1e9
            changes = self.tracker.update(mono, boxes, dets.scores, names)
            for ch in changes:
                if ch.better_snapshot and self._snapshots is not None:
                    self._snaps[ch.event_id] = self._snapshots.request(Request(
                        self.camera, ch.event_id, str(ch.label), ch.best_score, frame.image,
                        ch.best_box))
                self._emit(ch, frame.ts_ns)
            if self._store is not None and mono - self._heartbeat_mono >= HEARTBEAT_S:
                # The history's row of an open event is as recent as its last message, and a
                # bird sitting still sends none for long: a crash would close it as it was
                # then. Its current state goes to the history (not to subscribers) now and then.
                self._heartbeat_mono = mono
                for ch in self.tracker.open_events():
                    self._store.submit(self._message(ch, frame.ts_ns))

    def close_all(self, ts_ns: int, reason: str) -> int:
        """End every open event (shutdown, camera removed, settings reloaded); later frames
        change nothing."""
        with self._lock:
            self._closed = True
            changes = self.tracker.close_all(ts_ns / 1e9, reason)  # (ts unused: last sightings)
            for ch in changes:
                self._emit(ch, ts_ns)
        return len(changes)

    def _message(self, ch: Change, ts_ns: int) -> EventMessage:
        """``ch`` as a message about the frame of wall time ``ts_ns`` (tracker times are
        monotonic: shifted by the last frame's offset)."""
        end = ch.kind == "end"
        start_ns = round(ch.start_ts * 1e9) + self._offset_ns
        last_ns = round(ch.last_ts * 1e9) + self._offset_ns
        return EventMessage(
            self.camera, self.seq, ch.kind, ch.event_id, str(ch.label),
            last_ns if end else ts_ns, start_ns, last_ns if end else None,
            round(max(((last_ns if end else ts_ns) - start_ns) / 1e9, 0.0), 3),
            ch.stationary, round(min(ch.top_score, 1.0), 4),
            tuple(round(min(max(v, 0.0), 1.0), 4) for v in ch.best_box),  # type: ignore[arg-type]
            tuple(ch.zones), tuple(ch.zones_entered), self._snaps.get(ch.event_id),
            ch.end_reason)

    def _emit(self, ch: Change, ts_ns: int) -> None:
        msg = self._message(ch, ts_ns)
        self.seq += 1
        if ch.kind == "end":
            self._snaps.pop(ch.event_id, None)
        self._publish(msg)
        if self._store is not None:
            self._store.submit(msg)


