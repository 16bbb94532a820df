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

from edged.api.messages import SnapMessage
from edged.pipeline.snapshots import Request, SnapshotWriter, crop_region

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


def test_each_picture_is_published_with_its_header_and_saved_when_there_is_a_directory(
        tmp_path: Path) -> None:
    sent: list[SnapMessage] = []
    for directory in (tmp_path / "snaps", None):
        w = SnapshotWriter(directory, 80, 3600, 10 << 20, publish=sent.append)
        w.start()
        try:
            assert w.request(_req("e1")) == ("roof/e1.jpg" if directory else None)
            _wait(lambda: len(sent) == 1, "the snap message")
        finally:
            w.stop()
            assert w.join(DEADLINE_S)
        (msg,) = sent
        sent.clear()
        assert (msg.topic, msg.event, msg.label, msg.seq, msg.crop) == (
            "snap/roof/", "e1", "bird", 0, False)
        assert msg.file == ("roof/e1.jpg" if directory else None)
        pic = cv2.imdecode(np.frombuffer(msg.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert pic.shape == (msg.height, msg.width, 3) == (360, 640, 3)
        if directory is not None:
            assert (directory / "roof/e1.jpg").read_bytes() == msg.jpeg
        else:
            assert w.written == 0 and w.state == "ok"


def test_a_crop_is_the_box_with_a_margin_inside_the_frame(tmp_path: Path) -> None:
    sent: list[SnapMessage] = []
    w = SnapshotWriter(None, 90, 3600, 10 << 20, crop=True, publish=sent.append)
    image = _frame()
    image[90:270, 160:320] = 200  # the object: the box (0.25, 0.25)-(0.5, 0.75) of 640x360
    w.start()
    try:
        w.request(_req("e1", image=image))
        w.request(Request("roof", "e2", "bird", 0.8, image, (0.0, 0.0, 0.02, 0.02)))
        _wait(lambda: len(sent) == 2, "two snaps")
    finally:
        w.stop()
        assert w.join(DEADLINE_S)
    one, corner = sent
    # 160 x 180 px box, margin 0.25 x 180 = 45 px on each side
    assert crop_region((0.25, 0.25, 0.5, 0.75), 640, 360) == (115, 45, 365, 315)
    assert one.crop and (one.width, one.height) == (250, 270)
    pic = cv2.imdecode(np.frombuffer(one.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert abs(int(pic[135, 125]) - 200) < 12  # the object's centre is the crop's centre
    assert abs(int(pic[5, 5]) - 90) < 12  # the margin is the frame around it
    # a tiny box in a corner: CROP_MIN_PX a side, slid inside the frame
    assert crop_region((0.0, 0.0, 0.02, 0.02), 640, 360) == (0, 0, 96, 96)
    assert (corner.width, corner.height) == (96, 96)
    assert crop_region((0.9, 0.9, 1.0, 1.0), 640, 360) == (544, 264, 640, 360)
    assert crop_region((0.0, 0.0, 1.0, 1.0), 640, 360) == (0, 0, 640, 360)  # never beyond
