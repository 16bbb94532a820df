"""Events end to end (issue 13): a real `edged run` on the bundled clip (an eagle crossing the
frame, detected as a bird on every frame), zones over its halves, the event history and the
snapshots in tmp_path; real ZeroMQ, real SQLite, real SIGTERM and SIGKILL."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged.api.history import TABLE, open_history
from edged.api.messages import EventMessage, decode
from edged.media import SAMPLE_CLIP
from tests.conftest import run_edged
from tests.daemon_util import Daemon, Listener, write_config
from tests.test_messages import VALIDATOR
from tests.timing import Speed

LEFT = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
RIGHT = [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]
EVERYWHERE = [[0, 0], [1, 0], [1, 1], [0, 1]]


def _config(tmp: Path, camera: dict[str, Any] | None = None, **events: Any) -> Path:
    return write_config(
        tmp / "edged.yaml",
        camera={"name": "roof", "source": str(SAMPLE_CLIP), "realtime": True, **(camera or {})},
        events={"history": str(tmp / "events.db"), "snapshots": str(tmp / "snaps"), **events},
        publish={"endpoints": [f"ipc://{tmp}/edged.sock"], "status_interval_s": 0.2})


def _events(sub: Listener) -> list[dict[str, Any]]:
    return [m for t, m, _ in sub.messages if t.startswith("event/")]


def _is_event(phase: str) -> Any:
    return lambda m: m[0] == "event/roof/" and m[1]["phase"] == phase


def _wait_row(db: Path, event_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(sqlite3.OperationalError), \
                contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            if conn.execute(f"SELECT 1 FROM {TABLE} WHERE id = ?", (event_id,)).fetchone():
                return  # (OperationalError: the file or table is not there yet)
        assert time.monotonic() < deadline, f"event {event_id} not in {db}"
        time.sleep(0.05)  # polling a file another process writes: nothing to block on


def _history(db: Path) -> list[dict[str, Any]]:
    proc = run_edged("events", "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_bird_becomes_one_event_with_zones_a_snapshot_and_a_history_row(
        tmp_path: Path, speed: Speed) -> None:
    cfg = _config(tmp_path, {"zones": {"left": LEFT, "right": RIGHT}})
    with Daemon(tmp_path, cfg) as d, Listener(f"ipc://{tmp_path}/edged.sock", (
            "event/", "process/", "count/", "snap/", "status/")) as sub:
        _, start, _ = sub.wait_until(_is_event("start"), speed.start_deadline(base_s=2.0),
                                     "the bird's event")
        assert start["label"] == "bird", start  # (zones come with inertia: in an update)
        assert start["snapshot"] == f"roof/{start['id']}.jpg"
        snap = tmp_path / "snaps" / start["snapshot"]
        sub.wait_until(lambda m: m[0] == "process/" and snap.is_file(), speed.deadline(),
                       "the snapshot file")
        img = cv2.imread(str(snap))
        assert img is not None and img.shape == (720, 1280, 3)
        # the open event is counted, in the camera's status too
        _, st, _ = sub.wait_until(lambda m: m[0] == "status/roof/" and m[1]["occupancy"][
            "objects"].get("bird") == 1, speed.deadline(), "a status counting the bird")
        assert set(st["occupancy"]["zones"]) == {"left", "right"}
        code, _ = d.stop()
        sub.drain()
    assert code == 0, d.stderr[-3000:]
    # count/: on every change, contiguous seqs; the bird counted while there, 0 at the end
    counts = [m for t, m, _ in sub.messages if t == "count/roof/"]
    for m in counts:
        VALIDATOR.validate(m)
        assert set(m["occupancy"]["zones"]) == {"left", "right"}
    assert [m["seq"] for m in counts] == list(range(counts[0]["seq"],
                                                    counts[0]["seq"] + len(counts)))
    assert any(m["occupancy"]["objects"]["bird"] == 1 for m in counts), counts
    assert any(sum(z.get("bird", 0) for z in m["occupancy"]["zones"].values()) == 1
               for m in counts), counts  # in a zone at some point (it crosses both)
    assert counts[-1]["occupancy"] == {"objects": {"bird": 0},
                                       "zones": {"left": {"bird": 0}, "right": {"bird": 0}}}
    # snap/: header + JPEG of the event's best frame, the same bytes as the file it names
    snaps = [m for t, m, _ in sub.messages if t == "snap/roof/"]
    assert snaps and {m["event"] for m in snaps} == {start["id"]}, snaps
    for m in snaps:
        VALIDATOR.validate(m)
        assert m["file"] == start["snapshot"] and not m["crop"] and m["label"] == "bird"
    jpeg = sub.jpegs[start["id"]]
    pic = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert pic is not None and pic.shape == (snaps[-1]["height"], snaps[-1]["width"], 3) \
        == (720, 1280, 3)
    assert snap.read_bytes() == jpeg  # the last one sent is the one on disk
    events = _events(sub)
    for m in events:
        VALIDATOR.validate(m)
        assert isinstance(decode(json.dumps(m).encode()), EventMessage)
    ids = {m["id"] for m in events}
    assert ids == {start["id"]}, events  # one bird on every frame: one event, no fragments
    end = events[-1]
    assert end["phase"] == "end" and end["end_reason"] == "shutdown" and end["end_ts_ns"]
    assert [m["phase"] for m in events].count("start") == 1
    assert set(end["zones_entered"]) <= {"left", "right"} and end["zones_entered"]
    (row,) = _history(tmp_path / "events.db")
    assert row["id"] == start["id"] and row["end_reason"] == "shutdown"
    assert row["zones_entered"] == end["zones_entered"]


def test_a_mask_over_the_bird_suppresses_its_events_not_its_detections(
        tmp_path: Path, speed: Speed) -> None:
    cfg = _config(tmp_path, {"masks": [EVERYWHERE]})
    n = 25  # a second of the clip: ~8 times what confirming an event takes
    with Daemon(tmp_path, cfg) as d, Listener(f"ipc://{tmp_path}/edged.sock",
                                             ("det/", "event/")) as sub:
        sub.wait_count(lambda m: m[0] == "det/roof/" and any(
            x["label"] == "bird" for x in m[1]["detections"]), n,
            speed.start_deadline(base_s=2.0) + speed.deadline(n_frames=n), "birds detected")
        code, _ = d.stop()
        sub.drain()
    assert code == 0, d.stderr[-3000:]
    assert _events(sub) == []


def test_a_crash_leaves_no_event_open_lost_or_twice(tmp_path: Path, speed: Speed) -> None:
    cfg = _config(tmp_path)
    db = tmp_path / "events.db"
    with Daemon(tmp_path, cfg) as d, Listener(f"ipc://{tmp_path}/edged.sock",
                                             ("event/",)) as sub:
        _, start, _ = sub.wait_until(_is_event("start"), speed.start_deadline(base_s=2.0),
                                     "an event")
        _wait_row(db, start["id"], speed.deadline())  # written by the store: then kill
        d.signal(signal.SIGKILL)
        d.proc.wait(speed.deadline())
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    with Daemon(tmp_path, cfg) as d2, Listener(f"ipc://{tmp_path}/edged.sock",
                                              ("event/",)) as sub2:
        sub2.wait_until(_is_event("start"), speed.start_deadline(base_s=2.0),
                        "the event after the restart")
        code, _ = d2.stop()
    assert code == 0, d2.stderr[-3000:]
    rows = _history(db)
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows) == 2, rows  # nothing twice
    assert by_id[start["id"]]["end_reason"] == "crash", rows  # the orphan, closed at restart
    assert [r["end_reason"] for r in rows if r["id"] != start["id"]] == ["shutdown"]
    conn = open_history(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def test_snapshots_that_cannot_be_written_leave_the_events_and_the_status_says_why(
        tmp_path: Path, speed: Speed) -> None:
    blocker = tmp_path / "snaps"
    blocker.write_text("a file where the snapshot directory should be: a full disk stand-in")
    cfg = _config(tmp_path)
    with Daemon(tmp_path, cfg) as d, Listener(f"ipc://{tmp_path}/edged.sock",
                                             ("event/", "process/")) as sub:
        sub.wait_until(_is_event("start"), speed.start_deadline(base_s=2.0), "an event")
        _, st, _ = sub.wait_until(
            lambda m: m[0] == "process/" and (m[1]["snapshots"] or "ok") != "ok",
            speed.deadline(base_s=2.0), "the status saying why snapshots fail")
        code, _ = d.stop()
    assert code == 0, d.stderr[-3000:]
    assert st["snapshots"].startswith("snapshots not written: ") and st["history"] == "ok"


def test_a_clock_step_neither_ends_an_event_nor_keeps_one_open() -> None:
    """Boards without an RTC set their clock by NTP minutes after boot: tracked on the wall
    clock, a step forward ended every event (and restarted it), a step back kept one open.
    Tracked on the monotonic clock, messages still carry wall times."""
    from edged.config import CameraConfig, EventsConfig
    from edged.core.types import Detections
    from edged.pipeline.events import CameraEvents
    from edged.pipeline.slot import Frame

    out: list[Any] = []
    ev = CameraEvents("roof", EventsConfig(), CameraConfig(name="roof"), out.append, None,
                      None)
    bird = Detections(np.array([[100, 100, 200, 200]], np.float32), np.array([0.9], np.float32),
                      np.array([14], np.int32))
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                      np.zeros(0, np.int32))
    labels = ["x"] * 14 + ["bird"]
    wall, mono, step = 1_763_800_000 * 10**9, 5 * 10**9, 200_000_000  # 5 fps
    image = np.zeros((720, 1280, 3), np.uint8)
    for i in range(50):  # 10 s of the bird; the wall clock jumps an hour ahead halfway
        jump = 3600 * 10**9 if i >= 25 else 0
        ev.on_frame(Frame(image, i, wall + i * step + jump, mono + i * step), bird, labels,
                    1280, 720)
    sent = [m for m in out if isinstance(m, EventMessage)]  # (not the count/ messages)
    assert [m.phase for m in sent] == ["start"]  # no end, no second start at the jump
    for i in range(50, 100):  # it leaves; the wall clock jumps back two hours
        ev.on_frame(Frame(image, i, wall + i * step - 3600 * 10**9, mono + i * step), none,
                    labels, 1280, 720)
    sent = [m for m in out if isinstance(m, EventMessage)]
    assert [m.phase for m in sent] == ["start", "end"]  # ended on the monotonic clock
    end = sent[-1]
    assert end.end_reason == "left" and 9 < end.duration_s < 11


def _layer(events: dict[str, Any], camera: dict[str, Any], out: list[Any],
           numbering: Any = None) -> Any:
    """A camera's event layer built from config as the daemon builds it (parsed and checked
    against the shipped model's labels)."""
    from edged.config import parse_config, watched_labels
    from edged.pipeline.events import CameraEvents

    cfg = parse_config({"events": events, "camera": {"name": "roof", **camera}})
    cam = cfg.cameras[0]
    return CameraEvents("roof", cfg.events, cam, out.append, None, None, numbering,
                        classes=watched_labels(cfg, cam))


def _frames(layer: Any, start: int, n: int, boxes: list[tuple[int, list[float]]]) -> None:
    """``n`` frames at 5 fps with these (class id, normalized box) detections in each."""
    from edged.core.types import Detections
    from edged.models import DEFAULT_MODEL
    from edged.pipeline.slot import Frame
    from edged.sidecar import load

    labels = load(DEFAULT_MODEL).labels
    image = np.zeros((100, 100, 3), np.uint8)
    dets = Detections(np.array([b for _, b in boxes], np.float32).reshape(-1, 4) * 100,
                      np.full(len(boxes), 0.9, np.float32),
                      np.array([c for c, _ in boxes], np.int32))
    for i in range(start, start + n):
        t = 10**9 + i * 200_000_000
        layer.on_frame(Frame(image, i, 1_763_800_000 * 10**9 + t, t), dets, labels, 100, 100)


BIRD, CAT = 14, 15  # COCO ids of the shipped model


def test_counts_list_watched_labels_and_zones_change_on_events_and_end_at_zero() -> None:
    from edged.api.messages import CountMessage, Occupancy

    out: list[Any] = []
    rail = {"polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]], "labels": ["bird"]}
    layer = _layer({}, {"detection": {"classes": ["bird", "cat"]},
                        "zones": {"rail": rail, "sky": [[0, 0], [1, 0], [1, 0.5], [0, 0.5]]}},
                   out)
    layer.start(0)
    assert out[-1].occupancy == Occupancy(  # all zeros at start: every label and zone known
        {"bird": 0, "cat": 0}, {"rail": {"bird": 0}, "sky": {"bird": 0, "cat": 0}})
    _frames(layer, 0, 10, [(BIRD, [0.1, 0.6, 0.2, 0.8]), (CAT, [0.5, 0.1, 0.7, 0.3])])
    counts = [m for m in out if isinstance(m, CountMessage)]
    assert counts[-1].occupancy == Occupancy(
        {"bird": 1, "cat": 1}, {"rail": {"bird": 1}, "sky": {"bird": 0, "cat": 1}})
    assert [m.seq for m in counts] == list(range(len(counts)))
    n = len(out)
    _frames(layer, 10, 5, [(BIRD, [0.1, 0.6, 0.2, 0.8]), (CAT, [0.5, 0.1, 0.7, 0.3])])
    assert not [m for m in out[n:] if isinstance(m, CountMessage)]  # no change: nothing sent
    layer.close_all(0, "shutdown")
    assert out[-1].occupancy.objects == {"bird": 0, "cat": 0}
    assert out[-1].occupancy.zones == {"rail": {"bird": 0}, "sky": {"bird": 0, "cat": 0}}


def test_a_label_s_own_rules_apply_to_it_only() -> None:
    from edged.api.messages import EventMessage

    out: list[Any] = []
    layer = _layer({"labels": {"bird": {"min_hits": 8, "window": 10}}}, {}, out)
    _frames(layer, 0, 7, [(BIRD, [0.1, 0.1, 0.2, 0.2]), (CAT, [0.5, 0.5, 0.7, 0.7])])
    started = [m.label for m in out if isinstance(m, EventMessage)]
    assert started == ["cat"]  # the cat on its 3rd frame; the bird needs 8
    _frames(layer, 7, 1, [(BIRD, [0.1, 0.1, 0.2, 0.2]), (CAT, [0.5, 0.5, 0.7, 0.7])])
    assert [m.label for m in out if isinstance(m, EventMessage)] == ["cat", "bird"]


def test_a_reloaded_layer_continues_the_camera_s_seqs_while_the_old_one_ends() -> None:
    from edged.api.messages import CountMessage, EventMessage
    from edged.pipeline.events import Numbering

    out: list[Any] = []
    numbering = Numbering()
    old = _layer({}, {}, out, numbering)
    _frames(old, 0, 5, [(BIRD, [0.1, 0.1, 0.2, 0.2])])
    new = _layer({"end_after_s": 9.0}, {}, out, numbering)  # created before the old ends
    new.start(0)
    old.close_all(0, "reload")
    _frames(new, 5, 5, [(BIRD, [0.1, 0.1, 0.2, 0.2])])
    for kind in (EventMessage, CountMessage):
        seqs = [m.seq for m in out if isinstance(m, kind)]
        assert seqs == list(range(len(seqs))), (kind, seqs)  # no repeat, never backwards
    assert [(m.phase, m.end_reason) for m in out if isinstance(m, EventMessage)] == [
        ("start", None), ("end", "reload"), ("start", None)]


def test_a_camera_removed_and_added_back_continues_its_seqs(tmp_path: Path,
                                                            speed: Speed) -> None:
    """Each kind's seq is +1 per message of a camera for the life of the process: a camera
    removed by one reload and added back by the next continues them (event/ and count/
    restarted at 0: a gap-and-repeat a subscriber reads as lost messages)."""
    def config(names: list[str]) -> Path:
        return write_config(
            tmp_path / "edged.yaml",
            cameras=[{"name": n, "source": str(SAMPLE_CLIP), "realtime": True} for n in names],
            events={"end_after_s": 1.0},
            publish={"endpoints": [f"ipc://{tmp_path}/edged.sock"], "status_interval_s": 0.5})

    kinds = ("det", "count", "event", "snap")
    with Daemon(tmp_path, config(["roof", "yard"])) as d, Listener(
            f"ipc://{tmp_path}/edged.sock", tuple(f"{k}/roof/" for k in kinds)) as sub:
        sub.wait_until(_is_event("start"), speed.start_deadline(base_s=2.0), "a roof event")
        config(["yard"])
        d.signal(signal.SIGHUP)
        sub.wait_until(lambda m: _is_event("end")(m) and m[1]["end_reason"] == "removed",
                       speed.deadline(), "roof's event ended by its removal")
        sub.drain()
        mark = len(sub.messages)
        config(["yard", "roof"])
        d.signal(signal.SIGHUP)
        sub.wait_until(_is_event("start"), speed.start_deadline(base_s=2.0),
                       "a roof event after it was added back")
        sub.wait_until(lambda m: m[0] == "snap/roof/", speed.deadline(), "its snapshot")
        code, _ = d.stop()
        sub.drain()
    assert code == 0, d.stderr[-3000:]
    for kind in kinds:
        seqs = [m["seq"] for t, m, _ in sub.messages if t == f"{kind}/roof/"]
        before = [m["seq"] for t, m, _ in sub.messages[:mark] if t == f"{kind}/roof/"]
        assert before and len(seqs) > len(before), kind
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (kind, seqs)
    counts = [m["occupancy"] for t, m, _ in sub.messages if t == "count/roof/"]
    assert all(a != b for a, b in itertools.pairwise(counts)), counts  # on change


def test_labels_a_reload_adds_are_listed_at_once() -> None:
    from edged.api.messages import CountMessage, Occupancy

    out: list[Any] = []
    layer = _layer({}, {}, out)
    layer.start(0)
    _frames(layer, 0, 5, [(BIRD, [0.1, 0.1, 0.2, 0.2])])
    assert out[-1].occupancy == Occupancy({"bird": 1}, {})
    layer.watch(["cat", "bird"], 1)  # detection.classes: [cat, bird] by a reload
    assert isinstance(out[-1], CountMessage)
    assert out[-1].occupancy == layer.occupancy == Occupancy({"bird": 1, "cat": 0}, {})
    n = len(out)
    layer.watch(["cat"], 2)  # nothing new: nothing sent
    assert len(out) == n
