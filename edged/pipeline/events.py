"""A camera's detections become events, on the inference thread right after each frame (it sees
every inferred frame; subscribers may not): the camera's ``EventTracker`` (edged.core.track)
turns them into start/update/end changes, which go out as ``event/<camera>/`` messages, into the
event history (``EventStore``, a writer thread) and, for a better sighting, to the snapshot
writer (another thread: no JPEG is encoded here).

What runs here per frame is the tracker (~0.1 ms with 20 objects, benchmarks/track.py); the
rest happens only on an event change.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence

import numpy as np

from edged.api.messages import (
    CountMessage,
    EventMessage,
    Message,
    Occupancy,
    unit,
    unit_box,
)
from edged.config import LABEL_RULES, CameraConfig, EventsConfig
from edged.core.track import Change, EventRules, EventTracker, Label, Zone
from edged.core.types import Detections
from edged.pipeline.slot import Frame
from edged.pipeline.snapshots import Request, SnapshotWriter
from edged.pipeline.store import EventStore

HEARTBEAT_S = 30.0  # an open event's state reaches the history at least this often


def rules(cfg: EventsConfig) -> EventRules:
    """The config's rules (what the config does not name keeps edged.core.track's value)."""
    return EventRules(**{k: getattr(cfg, k) for k in LABEL_RULES})


def label_rules(cfg: EventsConfig) -> dict[Label, EventRules]:
    """``events.labels``: each label's rules, the top-level ones where it names none."""
    default = rules(cfg)
    return {label: dataclasses.replace(default, **own) for label, own in cfg.labels.items()}


def settings_of(events: EventsConfig, cam: CameraConfig) -> tuple[object, ...]:
    """What a camera's tracker is built from: a reload changing it ends the camera's open
    events (``end_reason: reload``) and starts a new tracker."""
    return (rules(events), label_rules(events), events.anchor, dict(cam.zones), cam.masks)


class Numbering:
    """A camera's event and count seqs and the lock its event layers emit under. A reload
    replaces a camera's event layer while the old one still ends its events: both number from
    here, under this lock, so the camera's seqs neither repeat nor go backwards."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.event = 0
        self.count = 0
        self.occupancy: Occupancy | None = None  # the last count/ sent


class CameraEvents:
    """One camera's event layer. ``publish``: the publisher's queue; ``store`` and
    ``snapshots``: optional (no history file / no snapshot directory)."""

    def __init__(self, camera: str, events: EventsConfig, cam: CameraConfig,
                 publish: Callable[[Message], None], store: EventStore | None,
                 snapshots: SnapshotWriter | None, numbering: Numbering | None = None,
                 classes: Sequence[str] = ()) -> None:
        """``numbering``: the camera's (shared with the layer a reload replaces);
        ``classes``: the labels the camera watches (edged.config.watched_labels), counted from
        the start (0 until one is seen)."""
        self.camera = camera
        self.settings = settings_of(events, cam)
        zones = [Zone(name, z["polygon"], z["labels"]) for name, z in cam.zones.items()]
        self.tracker = EventTracker(
            default=rules(events), rules=label_rules(events), anchor=events.anchor,
            masks=cam.masks, zones=zones)
        self._publish = publish
        self._store = store
        self._snapshots = snapshots
        self.numbering = numbering or Numbering()
        # Occupancy: these labels are always listed (0 or more); a label is added on its
        # first event. Each zone lists its own labels, or all of these.
        self._watched: dict[str, None] = dict.fromkeys(classes)
        self._zone_labels = {z.name: z.labels for z in zones}
        self.occupancy = self._occupancy({})
        self._snaps: dict[str, str] = {}  # event id -> its snapshot's file name
        self._offset_ns = 0  # wall clock minus monotonic clock, as of the last frame
        self._heartbeat_mono = 0.0
        # The inference thread updates; a reload or the shutdown closes (other threads).
        self._lock = self.numbering.lock
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
                    name = self._snapshots.request(Request(
                        self.camera, ch.event_id, str(ch.label), ch.best_score, frame.image,
                        ch.best_box, frame.ts_ns))
                    if name is not None:
                        self._snaps[ch.event_id] = name
                self._emit(ch, frame.ts_ns)
            if self.tracker.counts_changed:
                self._count(frame.ts_ns)
            if self._store is not None and mono - self._heartbeat_mono >= HEARTBEAT_S:
                # The history's row of an open event is as recent as its last message, and a
                # bird sitting still sends none for long: a crash would close it as it was
                # then. Its current state goes to the history (not to subscribers) now and then.
                self._heartbeat_mono = mono
                for ch in self.tracker.open_events():
                    self._store.submit(self._message(ch, frame.ts_ns), history_only=True)

    def close_all(self, ts_ns: int, reason: str) -> int:
        """End every open event (shutdown, camera removed, settings reloaded); later frames
        change nothing."""
        with self._lock:
            self._closed = True
            changes = self.tracker.close_all(ts_ns / 1e9, reason)  # (ts unused: last sightings)
            for ch in changes:
                self._emit(ch, ts_ns)
            if changes:
                self._count(ts_ns)  # every count back to 0
        return len(changes)

    def start(self, ts_ns: int) -> None:
        """Publish the occupancy (all zeros) as the camera's events begin, unless the camera's
        last count said the same (a reload's new layer after the old one ended): a
        subscriber (an MQTT bridge keeping retained counts) knows every label and zone from
        the start, and a count left non-zero by a crash is reset."""
        with self._lock:
            if self.occupancy != self.numbering.occupancy:
                self._publish_count(ts_ns)

    def _occupancy(self, counts: dict[tuple[str, str], int]) -> Occupancy:
        for (_, label) in counts:
            self._watched.setdefault(label)
        objects = {lb: counts.get(("", lb), 0) for lb in self._watched}
        zones = {name: {lb: counts.get((name, lb), 0) for lb in self._watched
                        if only is None or lb in only}
                 for name, only in self._zone_labels.items()}
        return Occupancy(objects, zones)

    def _count(self, ts_ns: int) -> None:
        occupancy = self._occupancy({(z, str(lb)): n
                                     for (z, lb), n in self.tracker.counts().items()})
        if occupancy != self.occupancy:
            self.occupancy = occupancy
            self._publish_count(ts_ns)

    def _publish_count(self, ts_ns: int) -> None:
        msg = CountMessage(self.camera, self.numbering.count, ts_ns, self.occupancy)
        self.numbering.count += 1
        self.numbering.occupancy = self.occupancy
        self._publish(msg)

    def watch(self, classes: Sequence[str], ts_ns: int) -> None:
        """Count these labels from now on too (a reload's new ``detection.classes``): a new
        label is listed at once (with its 0)."""
        with self._lock:
            for label in classes:
                self._watched.setdefault(label)
            if not self._closed:
                self._count(ts_ns)

    def _message(self, ch: Change, ts_ns: int) -> EventMessage:
        """``ch`` as a message about the frame of wall time ``ts_ns`` (tracker times are
        monotonic: shifted by the last frame's offset)."""
        end = ch.kind == "end"
        start_ns = round(ch.start_ts * 1e9) + self._offset_ns
        last_ns = round(ch.last_ts * 1e9) + self._offset_ns
        return EventMessage(
            self.camera, self.numbering.event, ch.kind, ch.event_id, str(ch.label),
            last_ns if end else ts_ns, start_ns, last_ns if end else None,
            round(max(((last_ns if end else ts_ns) - start_ns) / 1e9, 0.0), 3),
            ch.stationary, unit(ch.top_score), unit_box(ch.best_box), tuple(ch.zones),
            tuple(ch.zones_entered), self._snaps.get(ch.event_id), ch.end_reason)

    def _emit(self, ch: Change, ts_ns: int) -> None:
        msg = self._message(ch, ts_ns)
        self.numbering.event += 1
        if ch.kind == "end":
            self._snaps.pop(ch.event_id, None)
        self._publish(msg)
        if self._store is not None:
            self._store.submit(msg)


