"""The event history (edged.api.history), its writer thread (edged.pipeline.store) and
`edged events`: real SQLite files, a real writer killed with SIGKILL, the real CLI."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.api.history import (
    COLUMN_NAMES,
    HISTORY_VERSION,
    OUTBOX,
    HistoryError,
    NoHistory,
    SummaryRow,
    close_orphans,
    events,
    open_history,
    outbox_after,
    prune,
    record,
    summary,
)
from edged.api.messages import EventMessage, to_wire
from edged.errors import EXIT_RUNTIME, EXIT_USAGE
from edged.pipeline.store import EventStore
from edged.tools.events import duration, parse_when
from tests.conftest import REPO, one_line_error, run_edged
from tests.daemon_util import die_with_parent

NS = 1_000_000_000


def at(hour: int, minute: int = 0, second: int = 0, day: int = 22) -> int:
    """Local wall-clock time on 2026-11-<day> as Unix ns (the summary buckets in local time)."""
    return int(datetime(2026, 11, day, hour, minute, second).timestamp()) * NS


def event(eid: str, phase: str, ts_ns: int, start_ns: int, camera: str = "balcony",
          label: str = "bird", zones: tuple[str, ...] = (), entered: tuple[str, ...] = (),
          score: float = 0.5, reason: str | None = None, seq: int = 0,
          snapshot: str | None = None) -> EventMessage:
    """An event message as the event layer publishes it (an end carries end_ts_ns/reason)."""
    end = ts_ns if phase == "end" else None
    return EventMessage(
        camera=camera, seq=seq, phase=phase, id=eid, label=label, ts_ns=ts_ns,
        start_ts_ns=start_ns, end_ts_ns=end, duration_s=(ts_ns - start_ns) / NS,
        stationary=False, top_score=score, best_box=(0.1, 0.2, 0.3, 0.4), zones=zones,
        zones_entered=entered or zones, snapshot=snapshot,
        end_reason=(reason or "left") if phase == "end" else None)


def lifecycle(eid: str, start_ns: int, end_ns: int | None, **kw: object) -> list[EventMessage]:
    """start, an update in the middle, and an end unless ``end_ns`` is None."""
    mid = start_ns + ((end_ns or start_ns + 10 * NS) - start_ns) // 2
    out = [event(eid, "start", start_ns, start_ns, **kw),  # type: ignore[arg-type]
           event(eid, "update", mid, start_ns, **kw)]  # type: ignore[arg-type]
    if end_ns is not None:
        out.append(event(eid, "end", end_ns, start_ns, **kw))  # type: ignore[arg-type]
    return out


def write(conn: sqlite3.Connection, msgs: list[EventMessage]) -> None:
    with conn:
        for m in msgs:
            record(conn, m)


def rows(db: Path) -> dict[str, dict[str, object]]:
    """id -> row, read through a fresh read-only connection."""
    conn = open_history(db, readonly=True)
    try:
        return {str(r["id"]): r for r in events(conn)}
    finally:
        conn.close()


# --- the history --------------------------------------------------------------------------

def test_schema_follows_the_message_declaration(tmp_path: Path) -> None:
    conn = open_history(tmp_path / "sub" / "dir" / "events.db")  # creates the directories
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        wire = [k for k in to_wire(event("a", "start", 1, 1)) if k not in ("v", "kind")]
        assert cols == [k for k in wire if k not in ("seq", "phase")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == HISTORY_VERSION
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    finally:
        conn.close()


def test_upsert_keeps_one_row_per_event_with_its_latest_state(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    conn = open_history(db)
    t0 = at(7)
    write(conn, [event("e1", "start", t0, t0, zones=("rail",)),
                 event("e1", "update", t0 + 5 * NS, t0, zones=("roof",), entered=("rail", "roof"),
                       score=0.9, snapshot="e1.jpg"),
                 event("e1", "start", t0, t0, camera="garden"),  # same id, another camera
                 event("e1", "update", t0 + 2 * NS, t0, score=0.1)])  # late: never goes back
    conn.close()
    conn = open_history(db, readonly=True)
    got = events(conn)
    conn.close()
    assert [(r["camera"], r["id"]) for r in got] == [("balcony", "e1"), ("garden", "e1")]
    e1 = got[0]
    assert e1["ts_ns"] == t0 + 5 * NS and e1["top_score"] == 0.9 and e1["snapshot"] == "e1.jpg"
    assert e1["zones"] == ["roof"] and e1["zones_entered"] == ["rail", "roof"]
    assert e1["best_box"] == [0.1, 0.2, 0.3, 0.4] and e1["stationary"] is False
    assert e1["end_ts_ns"] is None and e1["end_reason"] is None
    assert set(e1) == set(COLUMN_NAMES)


def test_an_end_lands_after_an_update_sent_later_than_the_last_sighting(tmp_path: Path) -> None:
    """An update held back by update_interval_s can go out after the object was last seen: its
    ts_ns is later than the end's (the last sighting). The end must still close the row."""
    conn = open_history(tmp_path / "events.db")
    t0 = at(7)
    end = event("e1", "end", t0 + 5 * NS, t0)
    write(conn, [event("e1", "start", t0, t0), event("e1", "update", t0 + 10 * NS, t0), end])
    conn.close()
    row = rows(tmp_path / "events.db")["e1"]
    assert row["end_ts_ns"] == end.end_ts_ns and row["end_reason"] == "left"


def test_close_orphans_ends_open_events_at_their_last_sighting(tmp_path: Path) -> None:
    conn = open_history(tmp_path / "events.db")
    t0 = at(7)
    write(conn, lifecycle("done", t0, t0 + 60 * NS) + lifecycle("open", t0, None)
          + [event("late", "start", t0 + 100 * NS, t0 + 100 * NS)])
    assert close_orphans(conn, "crash", t0 + 50 * NS) == 1  # "late" is newer than the bound
    got = {r["id"]: r for r in events(conn)}
    assert got["open"]["end_reason"] == "crash"
    assert got["open"]["end_ts_ns"] == got["open"]["ts_ns"] == t0 + 5 * NS
    assert got["done"]["end_reason"] == "left" and got["done"]["end_ts_ns"] == t0 + 60 * NS
    assert got["late"]["end_ts_ns"] is None
    assert close_orphans(conn, "shutdown", t0 + 200 * NS) == 1
    assert close_orphans(conn, "shutdown", t0 + 200 * NS) == 0
    conn.close()


def test_prune_deletes_only_events_that_ended_before(tmp_path: Path) -> None:
    conn = open_history(tmp_path / "events.db")
    day = 86400 * NS
    t0 = at(7)
    write(conn, lifecycle("old", t0 - 10 * day, t0 - 9 * day)
          + lifecycle("sitting", t0 - 10 * day, None)  # open: still there
          + lifecycle("new", t0 - day, t0 - day + 60 * NS))
    assert prune(conn, t0 - 7 * day) == 1
    assert sorted(r["id"] for r in events(conn)) == ["new", "sitting"]
    conn.close()


@pytest.fixture
def history_db(tmp_path: Path) -> Path:
    """Four events over three days and two cameras, at known local times."""
    db = tmp_path / "events.db"
    conn = open_history(db)
    write(conn, lifecycle("e1", at(7, 50), at(8, 20), zones=("rail",), score=0.87)
          + lifecycle("e2", at(8, 5), at(8, 6), zones=("roof",), score=0.6)
          + [event("e3", "start", at(9), at(9), camera="garden", label="person", score=0.9),
             event("e3", "update", at(9, 10), at(9), camera="garden", label="person", score=0.9)]
          + lifecycle("e4", at(12, day=20), at(12, 1, day=20)))
    conn.close()
    return db


def test_queries_filter_by_time_camera_label_and_zone(history_db: Path) -> None:
    conn = open_history(history_db, readonly=True)
    try:
        def ids(**kw: object) -> list[str]:
            return [str(r["id"]) for r in events(conn, **kw)]  # type: ignore[arg-type]

        assert ids() == ["e4", "e1", "e2", "e3"]  # by start
        assert ids(since_ns=at(0)) == ["e1", "e2", "e3"]
        # present at some time in the window: e1 began before 08:10 and was still there
        assert ids(since_ns=at(8, 10), until_ns=at(8, 30)) == ["e1"]
        assert ids(until_ns=at(0, day=21)) == ["e4"]
        assert ids(camera="garden") == ["e3"]
        assert ids(label="bird", since_ns=at(0)) == ["e1", "e2"]
        assert ids(zone="roof") == ["e2"]
        assert ids(zone="rail", camera="garden") == []
        assert ids(camera="nowhere") == []
    finally:
        conn.close()


def test_summary_per_hour_splits_dwell_across_hours(history_db: Path) -> None:
    conn = open_history(history_db, readonly=True)
    try:
        assert summary(conn, since_ns=at(0), by="hour") == [
            SummaryRow("2026-11-22 07:00", "balcony", "bird", 1, 600.0),
            SummaryRow("2026-11-22 08:00", "balcony", "bird", 1, 1260.0),  # 20 min + 1 min
            SummaryRow("2026-11-22 09:00", "garden", "person", 1, 600.0),  # open: to last seen
        ]
        # e1 began before the window: its dwell is clipped, its visit not counted
        assert summary(conn, since_ns=at(8), until_ns=at(8, 59), label="bird") == [
            SummaryRow("2026-11-22 08:00", "balcony", "bird", 1, 1260.0)]
        assert summary(conn, by="day") == [
            SummaryRow("2026-11-20", "balcony", "bird", 1, 60.0),
            SummaryRow("2026-11-22", "balcony", "bird", 2, 1860.0),
            SummaryRow("2026-11-22", "garden", "person", 1, 600.0),
        ]
    finally:
        conn.close()


def test_a_file_that_is_not_a_history_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    for readonly in (False, True):
        with pytest.raises(HistoryError, match="file is not a database"):
            open_history(junk, readonly)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(HistoryError, match="not an edged event history"):
        open_history(other)
    newer = tmp_path / "newer.db"
    open_history(newer).close()
    with sqlite3.connect(newer) as c:
        c.execute(f"PRAGMA user_version={HISTORY_VERSION + 1}")
    with pytest.raises(HistoryError, match="newer edged"):
        open_history(newer)
    with pytest.raises(NoHistory, match="no event history"):
        open_history(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(HistoryError, match="cannot create"):
        open_history(afile / "events.db")


def test_a_field_added_to_the_message_becomes_a_column(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with sqlite3.connect(db) as c:  # a history from before `snapshot` and `end_reason` existed
        c.execute("CREATE TABLE events (camera TEXT NOT NULL, id TEXT NOT NULL, ts_ns INTEGER, "
                  "PRIMARY KEY (camera, id))")
        c.execute(f"PRAGMA user_version={HISTORY_VERSION}")
    c.close()
    conn = open_history(db)
    write(conn, lifecycle("e", at(7), at(8)))
    assert events(conn)[0]["end_reason"] == "left"
    conn.close()


def test_durations_and_dates_the_cli_accepts() -> None:
    now = at(12)
    assert parse_when("24h", now) == at(12, day=21)
    assert parse_when("90m", now) == at(10, 30)
    assert parse_when("7d", now) == at(12, day=15)
    assert parse_when("2026-11-22", now) == at(0)
    assert parse_when("2026-11-22T07:05", now) == at(7, 5)
    with pytest.raises(Exception, match="expected a duration ago"):
        parse_when("yesterday", now)
    assert duration(4.25) == "4.2s" and duration(845) == "14m05s" and duration(7380) == "2h03m"


# --- the writer thread ----------------------------------------------------------------------

def wait_for(cond: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def store_factory(tmp_path: Path) -> Iterator[list[EventStore]]:
    made: list[EventStore] = []
    yield made
    for s in made:
        s.stop()
        assert s.join(10), "the store thread did not end"


def test_submit_from_another_thread_then_stop_drains_and_closes(
        tmp_path: Path, store_factory: list[EventStore]) -> None:
    db = tmp_path / "events.db"
    store = EventStore(db)
    store_factory.append(store)
    store.start()
    t0 = at(7)

    def produce() -> None:  # the inference thread
        for i in range(200):
            for m in lifecycle(f"e{i}", t0 + i * NS, t0 + i * NS + 30 * NS if i % 4 else None):
                store.submit(m)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(30)
    assert store.flush(10)
    assert len(rows(db)) == 200 and store.state == "ok"
    for i in range(200, 300):  # then stop at once: what is queued is still written
        for m in lifecycle(f"e{i}", t0 + i * NS, None):
            store.submit(m)
    store.stop()
    assert store.join(10)
    got = rows(db)
    assert len(got) == 300 and store.written == 200 * 3 - 50 + 100 * 2
    assert store.dropped == store.lost == store.errors == 0
    # the open ones (every 4th, and the last 100) are closed as shutdown at their last sighting
    open_ids = {f"e{i}" for i in range(0, 200, 4)} | {f"e{i}" for i in range(200, 300)}
    assert {k for k, r in got.items() if r["end_reason"] == "shutdown"} == open_ids
    assert all(r["end_ts_ns"] == r["ts_ns"] for r in got.values())
    assert store.shutdown_closed == len(open_ids)


def test_a_full_queue_drops_updates_never_starts_or_ends(
        tmp_path: Path, store_factory: list[EventStore]) -> None:
    db = tmp_path / "events.db"
    store = EventStore(db, queue_size=4)  # not started: the queue fills as when the disk stalls
    store_factory.append(store)
    t0 = at(7)
    a = lifecycle("a", t0, t0 + 20 * NS)  # start, update, end
    store.submit(a[0])
    store.submit(a[1])
    store.submit(event("a", "update", t0 + 15 * NS, t0, zones=("rail",)))
    store.submit(a[2])  # full now: start, update, update, end
    store.submit(event("b", "start", t0 + NS, t0 + NS))  # the oldest update goes
    assert store.dropped == 1 and store.queued == 4
    store.submit(event("b", "update", t0 + 2 * NS, t0 + NS))  # the other update of a goes
    assert store.dropped == 2 and store.queued == 4
    store.submit(event("c0", "start", t0, t0))  # and b's update
    assert store.dropped == 3 and store.queued == 4  # a start, a end, b start, c0 start
    store.submit(event("b", "update", t0 + 3 * NS, t0 + NS))  # none queued: this one goes
    assert store.dropped == 4 and store.queued == 4
    for i in range(1, 5):  # starts beyond the bound are kept, up to twice the queue size
        store.submit(event(f"c{i}", "start", t0 + i * NS, t0 + i * NS))
    assert store.queued == 8 and store.lost == 0
    store.submit(event("c5", "start", t0, t0))  # then the oldest (a's start) is lost
    assert store.queued == 8 and store.lost == 1
    store.start()
    assert store.flush(10)
    got = rows(db)
    assert sorted(got) == ["a", "b", "c0", "c1", "c2", "c3", "c4", "c5"]
    assert got["a"]["end_reason"] == "left" and got["a"]["zones_entered"] == []  # end's state
    assert got["b"]["end_ts_ns"] is None


def test_start_closes_a_crash_and_prunes_then_prunes_every_interval(
        tmp_path: Path, store_factory: list[EventStore]) -> None:
    db = tmp_path / "events.db"
    day = 86400 * NS
    now = at(12)
    conn = open_history(db)
    write(conn, lifecycle("old", now - 9 * day, now - 8 * day)
          + lifecycle("crashed", now - 3600 * NS, None)
          + lifecycle("recent", now - day, now - day + NS))
    conn.close()
    store = EventStore(db, retention_days=7, prune_interval_s=0.05, clock_ns=lambda: now)
    store_factory.append(store)
    store.start()
    wait_for(lambda: store.pruned == 1)
    assert store.crash_closed == 1
    got = rows(db)
    assert sorted(got) == ["crashed", "recent"]
    assert got["crashed"]["end_reason"] == "crash"
    for m in lifecycle("late-old", now - 10 * day, now - 9 * day):  # recorded, then pruned
        store.submit(m)
    wait_for(lambda: store.pruned == 2)
    assert "late-old" not in rows(db) and store.state == "ok"


def test_the_store_deletes_nothing_unless_given_a_retention(
        tmp_path: Path, store_factory: list[EventStore]) -> None:
    """The retention's default is the configuration's (events.retention_days); the store has
    no policy of its own that a caller could get by leaving the argument out."""
    db = tmp_path / "events.db"
    now = at(12)
    conn = open_history(db)
    write(conn, lifecycle("last-year", now - 400 * 86400 * NS, now - 399 * 86400 * NS))
    conn.close()
    store = EventStore(db, clock_ns=lambda: now)
    store_factory.append(store)
    store.start()
    for m in lifecycle("today", now - 60 * NS, now):  # written after the pruning at start
        store.submit(m)
    wait_for(lambda: store.written == 3)
    assert sorted(rows(db)) == ["last-year", "today"] and store.pruned == 0


def small_disk(extra_pages: int) -> Callable[[Path], sqlite3.Connection]:
    """An opener of the history limited to a few more pages: SQLite's own SQLITE_FULL."""
    def opener(path: Path) -> sqlite3.Connection:
        conn = open_history(path)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages + extra_pages}")
        return conn
    return opener


def fill_until_refused(store: EventStore, t0: int) -> str:
    """Starts e0, e1, ... one at a time until the history refuses one: its id (kept queued)."""
    for i in range(40):
        store.submit(event(f"e{i}", "start", t0, t0, snapshot="x" * 3000))
        wait_for(lambda: store.queued == 0 or store.state != "ok")
        if store.state != "ok":
            return f"e{i}"
    raise AssertionError("the small disk took 40 events")


def test_a_full_disk_is_reported_and_the_thread_carries_on(
        tmp_path: Path, store_factory: list[EventStore]) -> None:
    db = tmp_path / "events.db"
    store = EventStore(db, opener=small_disk(3), retry_s=0.1)
    store_factory.append(store)
    store.start()
    t0 = at(7)
    refused = fill_until_refused(store, t0)
    assert store.state.startswith(f"event history {db}:")
    assert "full" in store.state and store.is_alive()
    assert store.errors == 0 and store.queued == 1 and refused not in rows(db)  # kept
    store.submit(event("later", "start", t0, t0))  # waits behind it, in order
    # room again (another process deletes rows): the kept ones are written, the state says so
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM events WHERE id != 'e0'")
    c.close()
    assert store.flush(10)
    assert store.state == "ok" and store.errors == 0
    assert {"e0", refused, "later"} <= set(rows(db))


def _outbox(db: Path) -> list[tuple[str, str]]:
    """(id, phase) of the messages in the outbox, oldest first."""
    conn = open_history(db, readonly=True)
    try:
        return [(m["id"], m["phase"]) for m in
                (json.loads(p) for _, _, p in outbox_after(conn, 0, 10_000))]
    finally:
        conn.close()


def test_what_a_full_history_refuses_goes_to_the_bridge_at_once_in_order_and_not_again(
        tmp_path: Path, store_factory: list[EventStore]) -> None:
    """With MQTT on, the bridge gets each message the history refuses, and each one submitted
    meanwhile, without waiting for the next try (an hour here); once written, those stay out
    of the outbox (the broker had them already)."""
    db = tmp_path / "events.db"
    handed: list[tuple[EventMessage, int]] = []
    store = EventStore(db, opener=small_disk(3), retry_s=3600, outbox=True,
                       on_refused=lambda m, after: handed.append((m, after)))
    store_factory.append(store)
    store.start()
    t0 = at(7)
    refused = fill_until_refused(store, t0)
    n = int(refused[1:])
    assert n > 0 and _outbox(db) == [(f"e{k}", "start") for k in range(n)]  # the normal way
    wait_for(lambda: len(handed) == 1)
    store.submit(event("later", "start", t0, t0))
    store.submit(event("later", "end", t0 + NS, t0))
    wait_for(lambda: len(handed) == 3)
    # each with the outbox seq it follows: the last one the history took (n messages: 1..n)
    assert [(m.id, m.phase, after) for m, after in handed] == [
        (refused, "start", n), ("later", "start", n), ("later", "end", n)]
    with sqlite3.connect(db) as c:  # room again; the last try at stop writes the queue
        c.execute("DELETE FROM events")
        c.execute(f"DELETE FROM {OUTBOX}")
    c.close()
    store.stop()
    assert store.join(10) and store.errors == 0 and store.lost == 0
    assert {refused, "later"} <= set(rows(db)) and rows(db)["later"]["end_reason"] is not None
    # the outbox has only the end that stop made for the event still open (a new message)
    assert _outbox(db) == [(refused, "end")] and len(handed) == 3


def test_a_nearly_full_disk_still_takes_the_rows_that_fit_and_keeps_the_rest(
        tmp_path: Path, store_factory: list[EventStore]) -> None:
    """A batch the disk refuses is not dropped, and does not block the rows that fit."""
    db = tmp_path / "events.db"
    store = EventStore(db, opener=small_disk(6), retry_s=0.05)
    store_factory.append(store)
    t0 = at(7)
    n = 20
    for i in range(n):  # one batch: queued before the thread starts
        store.submit(event(f"e{i:02}", "start", t0, t0, snapshot="x" * 3000))
    store.start()
    wait_for(lambda: store.state != "ok" and store.queued < n)
    fit = store.written
    assert 0 < fit < n and store.errors == 0
    assert sorted(rows(db)) == [f"e{i:02}" for i in range(fit)]  # in order, up to the refused
    deadline = time.monotonic() + 30
    while store.written < n:  # another process makes room now and then: all of them land
        assert time.monotonic() < deadline, (store.written, store.state)
        with sqlite3.connect(db) as c:
            c.execute("DELETE FROM events")
        c.close()
        time.sleep(0.1)
    assert store.flush(10) and store.errors == 0 and store.lost == 0 and store.dropped == 0


# --- real processes ------------------------------------------------------------------------

CHILD = r"""
import sys
from pathlib import Path

from edged.pipeline.store import EventStore
from tests.test_history import at, event, lifecycle

mode, db = sys.argv[1], Path(sys.argv[2])
if mode == "write":  # events as fast as it can until SIGKILL; a line once each batch is durable
    store = EventStore(db)
    store.start()
    NS = 1_000_000_000
    for n in range(10**9):
        batch = []
        for k in range(10):
            i = n * 10 + k
            t = at(7) + i * NS
            msgs = lifecycle(f"e{i}", t, t + 5 * NS if i % 2 else None)
            msgs += [event(f"e{i}", "update", t + j * NS // 10, t) for j in range(1, 4)]
            for m in sorted(msgs, key=lambda m: m.ts_ns):
                store.submit(m)
            batch.append(f"e{i}:{'ended' if i % 2 else 'open'}")
        assert store.flush(30), "flush timed out"
        print(" ".join(batch), flush=True)
else:  # readonly: the history in a directory we cannot write
    from edged.api.history import HistoryError, open_history
    try:
        open_history(db)
        print("opened")
    except HistoryError as e:
        print(f"error: {e}")
    store = EventStore(db, retry_s=3600)
    store.start()
    store.submit(event("e", "start", at(7), at(7)))
    print(f"flushed: {store.flush(1)}")  # held for a retry, not dropped
    print(f"state: {store.state}")
    print(f"errors: {store.errors}, queued: {store.queued}")
    store.stop()  # the last try fails too: counted
    print(f"joined: {store.join(10)}")
    print(f"errors: {store.errors}, queued: {store.queued}")
"""


def test_sigkill_mid_stream_then_reopen(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, "write", str(db)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=die_with_parent)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in child.stdout or ()],
                              daemon=True)
    reader.start()
    durable: dict[str, str] = {}
    deadline = time.monotonic() + 60
    try:
        while len(durable) < 100:  # ten batches committed, and it keeps writing
            left = deadline - time.monotonic()
            assert left > 0 and child.poll() is None, child.stderr.read() if child.stderr else ""
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            durable.update(item.split(":") for item in line.split())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as raw:  # before edged touches it again
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    raw.close()
    store = EventStore(db)
    store.start()
    store.stop()
    assert store.join(10)
    assert store.crash_closed > 0 and store.shutdown_closed == 0
    conn = open_history(db, readonly=True)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT count(*) FROM events GROUP BY camera, id HAVING count(*) > 1"
                        ).fetchall() == []
    got = {r["id"]: r for r in events(conn)}
    conn.close()
    for eid, how in durable.items():  # nothing it was told was written is lost
        r = got[eid]
        assert r["end_reason"] == ("left" if how == "ended" else "crash"), (eid, r)
        assert r["end_ts_ns"] == r["ts_ns"] and r["ts_ns"] > r["start_ts_ns"]
    assert all(r["end_reason"] in ("left", "crash") for r in got.values())


@pytest.fixture
def readonly_dir() -> Iterator[tuple[Path, list[str]]]:
    """A directory the test's writer may not write, and how to run the writer. root writes
    anywhere: it then runs as nobody (setpriv), in a directory nobody can reach."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv: cannot make a directory unwritable to us")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        reach = subprocess.run([*prefix, sys.executable, "-c", "import edged"], cwd="/",
                               capture_output=True, check=False, timeout=60)
        if reach.returncode != 0:  # e.g. a checkout under /root (the fresh-machine test)
            pytest.skip("nobody cannot import edged from this checkout (it lives in a "
                        "directory only root may read)")
    base = Path(tempfile.mkdtemp(prefix="edged-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        yield ro, prefix
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)


def test_a_read_only_directory_is_a_clear_error_and_a_state(
        readonly_dir: tuple[Path, list[str]]) -> None:
    ro, prefix = readonly_dir
    db = ro / "events.db"
    proc = subprocess.run([*prefix, sys.executable, "-c", CHILD, "readonly", str(db)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    want = f"event history {db}: directory {ro} is not writable"
    assert proc.stdout.splitlines() == [f"error: {want}", "flushed: False", f"state: {want}",
                                        "errors: 0, queued: 1", "joined: True",
                                        "errors: 1, queued: 0"], proc.stderr
    assert proc.stderr.count(want) == 1, proc.stderr  # logged once
    assert not db.exists()


# --- edged events --------------------------------------------------------------------------

def test_cli_lists_and_exports(history_db: Path) -> None:
    proc = run_edged("events", "--db", str(history_db))
    assert proc.returncode == 0, proc.stderr
    # reading leaves no -wal/-shm behind (root's would lock a daemon of another user out)
    assert sorted(p.name for p in history_db.parent.iterdir()) == ["events.db"]
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["2026-11-20", "12:00:00", "1m00s", "balcony", "bird", "-",
                                "0.50", "left"]
    assert lines[1].split() == ["2026-11-22", "07:50:00", "30m00s", "balcony", "bird", "rail",
                                "0.87", "left"]
    assert lines[3].split() == ["2026-11-22", "09:00:00", "10m00s", "garden", "person", "-",
                                "0.90", "open"]

    proc = run_edged("events", "--db", str(history_db), "--json", "--camera", "balcony",
                     "--label", "bird", "--zone", "rail", "--since", "2026-11-21")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert [g["id"] for g in got] == ["e1"]
    assert got[0]["zones_entered"] == ["rail"] and got[0]["end_reason"] == "left"
    assert set(got[0]) == set(COLUMN_NAMES)

    proc = run_edged("events", "--db", str(history_db), "--csv", "--until", "2026-11-22T08:00")
    assert proc.returncode == 0, proc.stderr
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["id"] for r in table] == ["e4", "e1"]
    assert table[1]["start_local"] == "2026-11-22 07:50:00"
    assert table[1]["zones_entered"] == '["rail"]' and table[1]["snapshot"] == ""


def test_cli_summary_and_plot(history_db: Path, tmp_path: Path) -> None:
    proc = run_edged("events", "--db", str(history_db), "--summary", "hour", "--json",
                     "--since", "2026-11-22")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(ln) for ln in proc.stdout.splitlines()] == [
        {"bucket": "2026-11-22 07:00", "camera": "balcony", "label": "bird", "visits": 1,
         "dwell_s": 600.0},
        {"bucket": "2026-11-22 08:00", "camera": "balcony", "label": "bird", "visits": 1,
         "dwell_s": 1260.0},
        {"bucket": "2026-11-22 09:00", "camera": "garden", "label": "person", "visits": 1,
         "dwell_s": 600.0}]
    proc = run_edged("events", "--db", str(history_db), "--summary", "day", "--label", "bird")
    assert proc.returncode == 0, proc.stderr
    assert [ln.split() for ln in proc.stdout.splitlines()[1:]] == [
        ["2026-11-20", "balcony", "bird", "1", "1m00s"],
        ["2026-11-22", "balcony", "bird", "2", "31m00s"]]

    png = tmp_path / "visits.png"
    proc = run_edged("events", "--db", str(history_db), "--plot", str(png))
    if importlib.util.find_spec("matplotlib") is None:
        assert proc.returncode == EXIT_USAGE
        assert "pip install 'edged[plot]'" in one_line_error(proc)
        assert not png.exists()
    else:
        assert proc.returncode == 0, proc.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = cv2.imread(str(png))
        assert img is not None and img.shape[0] >= 300 and img.shape[1] >= 600
        # bars (matplotlib's tab:blue, BGR 180 119 31) and the dwell line (tab:orange)
        blue = np.all(np.abs(img.astype(int) - (180, 119, 31)) < 8, axis=2).sum()
        orange = np.all(np.abs(img.astype(int) - (14, 127, 255)) < 8, axis=2).sum()
        assert blue > 2000 and orange > 200, (blue, orange)


def test_cli_errors_are_one_line(history_db: Path, tmp_path: Path) -> None:
    proc = run_edged("events", "--db", str(tmp_path / "missing.db"))
    assert proc.returncode == EXIT_USAGE and "no event history" in one_line_error(proc)
    assert not (tmp_path / "missing.db").exists()  # reading never creates it
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\0garbage" * 512)
    proc = run_edged("events", "--db", str(junk))
    assert proc.returncode == EXIT_RUNTIME and "not a database" in one_line_error(proc)
    proc = run_edged("events", "--db", str(history_db), "--since", "last tuesday")
    assert proc.returncode == EXIT_USAGE and "--since" in one_line_error(proc)


def test_two_writers_opening_a_new_history_at_once_both_succeed(tmp_path: Path) -> None:
    """The event store and the MQTT bridge open the same new file at start, each on its own
    thread: one creates the layout, the other finds it (it once failed with 'table events
    already exists' or 'a database, but not an edged event history')."""
    for i in range(30):
        path = tmp_path / f"h{i}.db"
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def open_it(path: Path = path, barrier: threading.Barrier = barrier,
                    errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                open_history(path).close()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=open_it) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [], (i, errors)


def test_the_outbox_keeps_every_message_in_order_until_delivered(tmp_path: Path) -> None:
    """What the MQTT bridge delivers from: each recorded message (not the heartbeat's), the
    crash ends, in order; delivered ones go."""
    from edged.api.history import delivered, mark_delivered, outbox_after

    conn = open_history(tmp_path / "h.db")
    try:
        msgs = [event("a", "start", 1, 1), event("a", "update", 2, 1), event("b", "start", 3, 3)]
        with conn:
            for m in msgs:
                record(conn, m, outbox=True)
            record(conn, event("a", "update", 4, 1))  # not for the outbox
        rows = outbox_after(conn, 0, 10)
        assert [json.loads(p)["ts_ns"] for _, _, p in rows] == [1, 2, 3]
        assert close_orphans(conn, "crash", 10, outbox=True) == 2
        rows = outbox_after(conn, 0, 10)
        ends = sorted((json.loads(p) for _, _, p in rows[3:]), key=lambda m: m["id"])
        # ended at their last sighting (the latest recorded state, the heartbeat's too)
        assert [(m["id"], m["phase"], m["end_reason"], m["end_ts_ns"]) for m in ends] == \
            [("a", "end", "crash", 4), ("b", "end", "crash", 3)]
        mark_delivered(conn, "mqtt", rows[1][0])
        assert delivered(conn, "mqtt") == rows[1][0]
        assert [s for s, _, _ in outbox_after(conn, 0, 10)] == [s for s, _, _ in rows[2:]]
    finally:
        conn.close()
