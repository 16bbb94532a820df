"""Event snapshots: written off the caller's thread, the newest request per event wins,
retention by age and size, a disk that refuses writes stops snapshots (state says why), never
the writer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.pipeline.snapshots import Request, SnapshotWriter

DEADLINE_S = 30.0  # bounds a failing test only


def _frame(value: int = 90) -> np.ndarray:
    return np.full((360, 640, 3), value, np.uint8)


def _req(event: str, score: float = 0.8, image: np.ndarray | None = None) -> Request:
    return Request("roof", event, "bird", score, _frame() if image is None else image,
                   (0.25, 0.25, 0.5, 0.75))


def _wait(pred: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def writer(tmp_path: Path) -> SnapshotWriter:
    w = SnapshotWriter(tmp_path / "snaps", quality=80, max_age_s=3600, max_bytes=10 << 20)
    w.start()
    yield w  # type: ignore[misc]
    w.stop()
    assert w.join(DEADLINE_S)


def test_a_snapshot_is_a_jpeg_with_the_box_drawn_on_a_copy(
        writer: SnapshotWriter) -> None:
    frame = _frame()
    name = writer.request(_req("e1", image=frame))
    assert name == "roof/e1.jpg"
    _wait(lambda: writer.written == 1, "the snapshot")
    img = cv2.imread(str(writer.directory / name))
    assert img is not None and img.shape == (360, 640, 3)
    assert (frame == 90).all()  # the caller's frame is untouched: the box is drawn on a copy
    edge = img[90:270, 160]  # the box's left edge (x = 0.25 * 640): drawn
    inside = img[180, 240]  # the box spans x 160..320, y 90..270
    assert np.abs(edge.astype(int) - 90).max() > 60 and np.abs(inside.astype(int) - 90).max() < 10



def test_a_newer_request_for_the_same_event_replaces_a_waiting_one(tmp_path: Path) -> None:
    w = SnapshotWriter(tmp_path, quality=80, max_age_s=3600, max_bytes=10 << 20)  # not started
    w.request(_req("e1", 0.5, _frame(10)))
    w.request(_req("e1", 0.9, _frame(200)))
    assert w.dropped == 1
    w.start()
    w.stop()
    assert w.join(DEADLINE_S)  # stop writes what is pending first
    img = cv2.imread(str(tmp_path / "roof/e1.jpg"))
    assert img is not None and abs(int(img[5, 5, 0]) - 200) < 10  # the newer frame


def test_retention_deletes_by_age_then_oldest_beyond_the_size(tmp_path: Path) -> None:
    d = tmp_path / "roof"
    d.mkdir()
    now = time.time()
    for i, age in enumerate((7200, 30, 20, 10)):
        p = d / f"e{i}.jpg"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - age, now - age))
    w = SnapshotWriter(tmp_path, quality=80, max_age_s=3600, max_bytes=2500)
    w._retain()
    assert sorted(p.name for p in d.iterdir()) == ["e2.jpg", "e3.jpg"]  # e0 too old, e1 oldest


def test_a_full_disk_stops_snapshots_and_says_why(tmp_path: Path) -> None:
    """A path that cannot be a directory stands in for a full or read-only disk (root writes
    into read-only directories); the writer says why, keeps running, and recovers."""
    blocker = tmp_path / "snaps"
    blocker.write_text("not a directory")
    w = SnapshotWriter(blocker, quality=80, max_age_s=3600, max_bytes=10 << 20)
    w.start()
    try:
        w.request(_req("e1"))
        _wait(lambda: w.failed == 1, "a failed write")
        assert w.state.startswith("snapshots not written: ") and w.is_alive()
        blocker.unlink()
        w.request(_req("e2"))
        _wait(lambda: w.written == 1, "a write once the disk is back")
        assert w.state == "ok"
    finally:
        w.stop()
        assert w.join(DEADLINE_S)
