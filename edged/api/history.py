"""The event history: every event edged published, in one SQLite file that survives restarts.

One row per event (key: camera and id) holding its latest state: each ``start``, ``update`` and
``end`` message is upserted whole, so any one message that reaches the disk is enough to restore
the row (a lost ``start`` is healed by the next ``update``). The columns are the wire fields of
`EventMessage` (not ``seq`` and ``phase``: they describe a message, not the event), derived from
its declaration; tuples are stored as JSON text. A field added to the message later becomes a
new column when the file is next opened.

WAL with ``synchronous=NORMAL``: a committed write survives the process being killed (it is in
the WAL, which the next open replays); a power cut may lose the last transactions but never
corrupts the file. Readers (``edged events``) never block the writer.

Times are Unix epoch nanoseconds as on the wire; the summary buckets them in local time (the
pigeon watcher's "between 6 and 8" is on their clock).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
import types
import urllib.parse
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

from edged.api.messages import EventMessage, encode
from edged.errors import EdgedError, UsageError, first_line

# systemd's StateDirectory=edged; the one place this path is written down.
DEFAULT_DB = Path("/var/lib/edged/events.db")
# The layout (table, key, JSON encoding), in PRAGMA user_version. Columns following the message's
# fields are not a layout change: a missing one is added on open.
HISTORY_VERSION = 1
TABLE = "events"
KEY = ("camera", "id")
# Describe one message, not the event: not stored.
_NOT_STORED = frozenset({"seq", "phase"})
NS = 1_000_000_000
BUSY_TIMEOUT_S = 5.0  # how long a connection waits for another's lock

# What the MQTT bridge has still to deliver (only written while it is on): every event message
# in order, as its JSON, so a broker outage or a restart in between loses none. ``delivered``
# holds how far a consumer got. Added to any history on open: not a layout change.
OUTBOX = "outbox"
DELIVERED = "delivered"
_OUTBOX_SQL = (
    f"CREATE TABLE IF NOT EXISTS {OUTBOX} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "camera TEXT NOT NULL, ts_ns INTEGER NOT NULL, payload TEXT NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {DELIVERED} (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)")

EventRecord = dict[str, Any]  # column -> value, tuples as lists (what to_wire gives)
Bucket = Literal["hour", "day"]


class HistoryError(EdgedError):
    """The event history cannot be created, opened, read or written (unwritable directory,
    full disk, not a database, written by a newer edged)."""


class NoHistory(UsageError):
    """The event history file named does not exist (nothing recorded there yet, or a typo)."""


class Column(NamedTuple):
    name: str
    sql: str  # INTEGER | REAL | TEXT
    is_json: bool  # a tuple, stored as JSON text
    is_bool: bool


def _column(name: str, tp: Any) -> Column:
    if get_origin(tp) in (Union, types.UnionType):
        (tp,) = (a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is tuple:
        return Column(name, "TEXT", True, False)
    sql = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT"}.get(tp)
    if sql is None:  # a declaration error: the tests catch it
        raise TypeError(f"EventMessage.{name}: no SQLite column for {tp!r}")
    return Column(name, sql, False, tp is bool)


def _columns() -> tuple[Column, ...]:
    hints = get_type_hints(EventMessage)
    return tuple(_column(f.name, hints[f.name]) for f in dataclasses.fields(EventMessage)
                 if f.metadata.get("wire", True) and f.name not in _NOT_STORED)


COLUMNS: tuple[Column, ...] = _columns()
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)


def _q(name: str) -> str:
    return f'"{name}"'


def _create_sql() -> list[str]:
    cols = ", ".join(f"{_q(c.name)} {c.sql}" + (" NOT NULL" if c.name in KEY else "")
                     for c in COLUMNS)
    return [f"CREATE TABLE {TABLE} ({cols}, PRIMARY KEY ({', '.join(map(_q, KEY))}))",
            f"CREATE INDEX {TABLE}_start ON {TABLE} (start_ts_ns)",
            f"CREATE INDEX {TABLE}_end ON {TABLE} (end_ts_ns)"]


_UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(map(_q, COLUMN_NAMES))}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)}) "
    f"ON CONFLICT ({', '.join(map(_q, KEY))}) DO UPDATE SET "
    + ", ".join(f"{_q(n)} = excluded.{_q(n)}" for n in COLUMN_NAMES if n not in KEY)
    # a message replayed late never takes a row back in time
    # a late message never overwrites a newer state, but an end always lands: an update sent
    # after the last sighting (held back by update_interval_s) has a later ts_ns than the end
    + f" WHERE excluded.ts_ns >= {TABLE}.ts_ns OR excluded.end_ts_ns IS NOT NULL")


def _where(path: Path, e: BaseException) -> HistoryError:
    return HistoryError(f"event history {path}: {first_line(e)}")


def open_history(path: Path | str, readonly: bool = False) -> sqlite3.Connection:
    """The history at ``path``, created (with its directory) unless ``readonly``.

    HistoryError for a directory or file that cannot be written, a file that is not a database,
    or one written by a newer edged; NoHistory when ``readonly`` and the file does not exist.
    WAL needs its directory writable (the -wal and -shm files live next to the database): it is
    checked first, to say so instead of SQLite's "unable to open database file"."""
    path = Path(path)
    if readonly:
        if not path.is_file():
            raise NoHistory(f"no event history at {path} (nothing recorded yet? --db names "
                            "another file)")
        # No WAL file: no writer has it open and everything is in the main file. Read it as
        # immutable then, or this connection would create -wal and -shm files owned by whoever
        # runs `edged events` (root), which a daemon running as another user cannot open.
        quiet = "" if path.with_name(path.name + "-wal").exists() else "&immutable=1"
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro{quiet}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as e:
            raise _where(path, e) from e
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HistoryError(f"event history {path}: cannot create {path.parent}: "
                               f"{e.strerror or first_line(e)}") from e
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise HistoryError(f"event history {path}: directory {path.parent} is not "
                               "writable")
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise HistoryError(f"event history {path}: file is not writable")
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as e:
            raise _where(path, e) from e
    try:
        _prepare(conn, path, readonly)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
    """Check the layout, creating or extending it unless ``readonly``. Another writer setting
    up the same new file (the event store and the MQTT bridge at start) can make SQLite
    answer "locked" at once, without its busy wait (switching to WAL): tried again for up to
    BUSY_TIMEOUT_S, as long as the busy wait would have."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return _prepare_once(conn, path, readonly)
        except HistoryError as e:
            cause = e.__cause__
            if not (isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause)) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # SQLite gives nothing to wait on here


def _prepare_once(conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > HISTORY_VERSION:
            raise HistoryError(f"event history {path}: written by a newer edged (layout "
                               f"{version}, this one reads {HISTORY_VERSION})")
        if readonly:
            if version == 0:
                raise HistoryError(f"event history {path}: not an edged event history")
            return
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"event history {path}: cannot use WAL (journal mode {mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        with conn:
            # Two writers may open a new file at once (the event store and the MQTT bridge):
            # the layout is read again under the write lock, so only one of them creates it.
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise HistoryError(f"event history {path}: a database, but not an edged "
                                       "event history")
                for sql in _create_sql():
                    conn.execute(sql)
                conn.execute(f"PRAGMA user_version={HISTORY_VERSION}")
            else:
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
                if not have:
                    raise HistoryError(f"event history {path}: table {TABLE} is missing")
                for c in COLUMNS:
                    if c.name not in have:
                        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {_q(c.name)} {c.sql}")
            for sql in _OUTBOX_SQL:
                conn.execute(sql)
    except sqlite3.Error as e:
        raise _where(path, e) from e


def _value(c: Column, v: Any) -> Any:
    if c.is_json:
        return json.dumps(list(v), separators=(",", ":"))
    if c.is_bool:
        return int(v)
    return v


def record(conn: sqlite3.Connection, msg: EventMessage, outbox: bool = False) -> None:
    """Upsert ``msg`` as its event's latest state, in the caller's transaction (``with conn:``
    commits it; the store writes a batch per transaction); ``outbox``: also queue the message
    for the MQTT bridge. sqlite3.Error on failure."""
    conn.execute(_UPSERT, tuple(_value(c, getattr(msg, c.name)) for c in COLUMNS))
    if outbox:
        conn.execute(f"INSERT INTO {OUTBOX} (camera, ts_ns, payload) VALUES (?, ?, ?)",
                     (msg.camera, msg.ts_ns, encode(msg).decode()))


def close_orphans(conn: sqlite3.Connection, reason: str, ts_ns: int,
                  outbox: bool = False) -> int:
    """End every event still open and last seen at or before ``ts_ns``: ``end_reason`` is
    ``reason``, ``end_ts_ns`` its last sighting (``ts_ns`` of its latest message, so
    ``duration_s`` stays right). ``outbox``: queue their end messages (seq 0: no process
    numbered them) for the MQTT bridge. Returns how many; committed."""
    with conn:
        ends = [dataclasses.replace(_message(r), phase="end", seq=0, end_ts_ns=r["ts_ns"],
                                    end_reason=reason)
                for r in _select(conn, "WHERE end_ts_ns IS NULL AND ts_ns <= ?", (ts_ns,))] \
            if outbox else []
        cur = conn.execute(
            f"UPDATE {TABLE} SET end_ts_ns = ts_ns, end_reason = ? "
            "WHERE end_ts_ns IS NULL AND ts_ns <= ?", (reason, ts_ns))
        for msg in ends:
            conn.execute(f"INSERT INTO {OUTBOX} (camera, ts_ns, payload) VALUES (?, ?, ?)",
                         (msg.camera, msg.ts_ns, encode(msg).decode()))
    return cur.rowcount


def _select(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[EventRecord]:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    return [_row(r) for r in cur.execute(f"SELECT * FROM {TABLE} {where}", args)]


def _message(row: EventRecord) -> EventMessage:
    """The event message a stored row is the latest state of (phase and seq to be set)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in row.items()}
    return EventMessage(phase="update", seq=0, **fields)


def outbox_after(conn: sqlite3.Connection, seq: int, limit: int,
                 upto: int | None = None) -> list[tuple[int, str, bytes]]:
    """Up to ``limit`` queued event messages after ``seq`` (and up to ``upto``), oldest first:
    (seq, camera, JSON payload)."""
    return [(s, cam, payload.encode()) for s, cam, payload in conn.execute(
        f"SELECT seq, camera, payload FROM {OUTBOX} WHERE seq > ? AND seq <= ? ORDER BY seq "
        "LIMIT ?", (seq, (1 << 62) if upto is None else upto, limit))]


def outbox_last(conn: sqlite3.Connection) -> int:
    """The seq of the last message ever put in the outbox (0: none), delivered or not."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (OUTBOX,)).fetchone()
    return int(row[0]) if row else 0


def delivered(conn: sqlite3.Connection, name: str) -> int:
    """How far ``name`` got in the outbox (0: nowhere yet)."""
    row = conn.execute(f"SELECT seq FROM {DELIVERED} WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def mark_delivered(conn: sqlite3.Connection, name: str, seq: int) -> None:
    """``name`` has everything up to ``seq``: remember it and drop those messages; committed."""
    with conn:
        conn.execute(f"INSERT INTO {DELIVERED} (name, seq) VALUES (?, ?) ON CONFLICT (name) "
                     "DO UPDATE SET seq = max(seq, excluded.seq)", (name, seq))
        conn.execute(f"DELETE FROM {OUTBOX} WHERE seq <= ?", (seq,))


def prune(conn: sqlite3.Connection, older_than_ts_ns: int) -> int:
    """Delete the events that ended before ``older_than_ts_ns`` (open ones are kept whatever
    their age: a pigeon sitting for a week is still there). Returns how many; committed."""
    with conn:
        cur = conn.execute(f"DELETE FROM {TABLE} WHERE end_ts_ns IS NOT NULL AND "
                           "end_ts_ns < ?", (older_than_ts_ns,))
        # undelivered as long as the events are kept, no longer
        conn.execute(f"DELETE FROM {OUTBOX} WHERE ts_ns < ?", (older_than_ts_ns,))
    return cur.rowcount


def _row(row: sqlite3.Row) -> EventRecord:
    out: EventRecord = {}
    for c in COLUMNS:
        v = row[c.name]
        if c.is_json and v is not None:
            v = json.loads(v)
        elif c.is_bool and v is not None:
            v = bool(v)
        out[c.name] = v
    return out


def last_seen_ns(event: EventRecord) -> int:
    """When it was last seen: its end, or for an open event its latest message."""
    end = event["end_ts_ns"]
    return int(end if end is not None else event["ts_ns"])


def events(conn: sqlite3.Connection, since_ns: int | None = None, until_ns: int | None = None,
           camera: str | None = None, label: str | None = None,
           zone: str | None = None) -> list[EventRecord]:
    """The events present at some time in [since_ns, until_ns] (an event that began before
    ``since_ns`` and was still there after it counts), oldest start first. ``zone``: it entered
    that zone at some point. Each is a dict of the columns (tuples as lists); open events have
    ``end_ts_ns`` null."""
    given = [(cond, value) for cond, value in (
        ("COALESCE(end_ts_ns, ts_ns) >= ?", since_ns), ("start_ts_ns <= ?", until_ns),
        ("camera = ?", camera), ("label = ?", label)) if value is not None]
    where = [cond for cond, _ in given]
    params: list[int | str] = [value for _, value in given]
    sql = f"SELECT {', '.join(map(_q, COLUMN_NAMES))} FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY start_ts_ns, camera, id"
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row  # this cursor only: the caller's connection is left as it is
    rows = [_row(r) for r in cur.execute(sql, params)]
    if zone is not None:  # JSON text: filtered here, not with json_each (not in every build)
        rows = [r for r in rows if zone in (r["zones_entered"] or ())]
    return rows


class SummaryRow(NamedTuple):
    bucket: str  # local time: "2026-11-22 07:00" (hour) or "2026-11-22" (day)
    camera: str
    label: str
    visits: int  # events that began in this bucket
    dwell_s: float  # seconds of presence inside this bucket (an event may span several)


def _floor(t: datetime, by: Bucket) -> datetime:
    t = t.replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if by == "day" else t


def _label(t: datetime, by: Bucket) -> str:
    return t.strftime("%Y-%m-%d %H:00" if by == "hour" else "%Y-%m-%d")


def _spans(start_ns: int, end_ns: int, by: Bucket) -> Iterator[tuple[str, float]]:
    """(bucket, seconds) of [start_ns, end_ns] cut at local bucket boundaries."""
    start = datetime.fromtimestamp(start_ns / NS).astimezone()
    edge = _floor(start, by)
    while True:
        if by == "hour":
            nxt = edge + timedelta(hours=1)
        else:
            nxt = (edge.replace(tzinfo=None) + timedelta(days=1)).astimezone()
        lo = max(start_ns, int(edge.timestamp() * NS))
        hi = min(end_ns, int(nxt.timestamp() * NS))
        yield _label(edge, by), max(0, hi - lo) / NS
        if hi >= end_ns:
            return
        edge = nxt.astimezone()


def summarize(rows: Iterable[EventRecord], by: Bucket = "hour", since_ns: int | None = None,
              until_ns: int | None = None) -> list[SummaryRow]:
    """Visits and dwell per bucket, camera and label from event rows, dwell clipped to
    [since_ns, until_ns]; sorted by bucket, camera, label."""
    visits: dict[tuple[str, str, str], int] = {}
    dwell: dict[tuple[str, str, str], float] = {}
    for r in rows:
        start, end = int(r["start_ts_ns"]), last_seen_ns(r)
        cam, label = str(r["camera"]), str(r["label"])
        if (since_ns is None or start >= since_ns) and (until_ns is None or start <= until_ns):
            first = _label(_floor(datetime.fromtimestamp(start / NS), by), by)
            visits[(first, cam, label)] = visits.get((first, cam, label), 0) + 1
        lo = start if since_ns is None else max(start, since_ns)
        hi = end if until_ns is None else min(end, until_ns)
        if hi < lo:
            continue
        for bucket, seconds in _spans(lo, hi, by):
            dwell[(bucket, cam, label)] = dwell.get((bucket, cam, label), 0.0) + seconds
    keys = sorted(set(visits) | set(dwell))
    return [SummaryRow(b, c, lab, visits.get((b, c, lab), 0), round(dwell.get((b, c, lab), 0.0), 3))
            for b, c, lab in keys]


def summary(conn: sqlite3.Connection, since_ns: int | None = None, until_ns: int | None = None,
            camera: str | None = None, label: str | None = None, zone: str | None = None,
            by: Bucket = "hour") -> list[SummaryRow]:
    """Per local hour or day, camera and label: the visits that began then and the seconds
    objects were present (an hour-long sit counts its dwell in each hour it covers)."""
    rows = events(conn, since_ns, until_ns, camera, label, zone)
    return summarize(rows, by, since_ns, until_ns)
