"""The event store: the one thread that writes the event history (edged.api.history).

The inference thread hands each event message to `EventStore.submit`, which only appends to a
bounded in-memory queue: it never waits on the disk. The writer thread commits what is queued in
one transaction per batch (a few per second at most: little flash wear).

Queue full (the disk stalls): the oldest queued ``update`` is dropped and counted. ``start`` and
``end`` are never dropped for an update: the row is upserted whole from every message, so a lost
update costs an intermediate state, which the event's next message overwrites. Only when the
queue holds nothing but starts and ends (``2 x queue_size`` of them: the disk has been gone for
a long while) is the oldest of those dropped, counted in `lost`.

Lifecycle. At start the thread opens the history and closes the events a crash left open
(``end_reason: crash``). Shutdown: the daemon ends its open events itself, with ``end`` messages
``end_reason: shutdown`` (subscribers must hear of it too), and submits them before `stop`;
`stop` drains the queue, then closes whatever is still open with ``shutdown`` as a safety net
(a camera that hung and never sent its ends). Keep one store for the life of the process (a
reload does not restart it): stopping it closes every open event.

Failures never end the thread; the reason is logged once and reported by `state` until a write
succeeds again. A history that refuses writes for now (disk full, a read-only remount, locked,
an I/O error: SQLite's OperationalError) or cannot be opened keeps its batch: it goes back to
the head of the queue and is tried again every ``retry_s`` (the queue's drop policy bounds what
waits), so a disk that comes back loses nothing. A batch SQLite refuses for what it holds (a
value it cannot store, a corrupt file's IntegrityError) is dropped and counted in `errors`, as is
whatever still fails at stop.

With the MQTT bridge on, a message the history refuses (or cannot be opened for, or cannot
store) goes to ``on_refused`` with the outbox seq it follows (the bridge sends it live, after the
outbox's messages up to that seq), and so does every message submitted while the history is
failing: a full disk delays no event on MQTT. Such a message is recorded later without the
outbox, so the broker never gets it twice. An ``update`` the full queue drops (above) is lost to
MQTT too.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edged.api.history import (
    HistoryError,
    close_orphans,
    open_history,
    outbox_last,
    prune,
    record,
)
from edged.api.messages import EventMessage
from edged.errors import first_line
from edged.pipeline.stage import StageThread

logger = logging.getLogger(__name__)

QUEUE_SIZE = 1024
BATCH = 256  # messages per transaction
PRUNE_INTERVAL_S = 3600.0
RETRY_S = 30.0
OK = "ok"

Opener = Callable[[Path], sqlite3.Connection]


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryOnly(EventMessage):
    """A message for the history, never the MQTT outbox: an open event's heartbeat (nobody was
    sent it), or one the bridge sent live while the history failed."""


def _history_only(msg: EventMessage) -> HistoryOnly:
    return HistoryOnly(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)})


class EventStore(StageThread):
    """Writes event messages to the history at ``path``; see the module doc for the policies.

    ``retention_days``: ended events older than this are deleted, at start and every
    ``prune_interval_s`` (None: kept for ever; the daemon passes ``events.retention_days``,
    whose default is the configuration's). ``opener``: how the history is opened (tests
    give one that limits its size, to fill the "disk")."""

    def __init__(self, path: Path, retention_days: float | None = None,
                 queue_size: int = QUEUE_SIZE, prune_interval_s: float = PRUNE_INTERVAL_S,
                 retry_s: float = RETRY_S, opener: Opener = open_history,
                 clock_ns: Callable[[], int] = time.time_ns, outbox: bool = False,
                 on_commit: Callable[[], None] | None = None,
                 on_refused: Callable[[EventMessage, int], None] | None = None) -> None:
        # A daemon thread: a write stuck on a dying disk must not hold the process past a
        # bounded stop (the daemon joins it with a timeout; what was committed stays).
        super().__init__("edged-event-store", daemon=True)
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.path = Path(path)
        self._retention_ns = None if retention_days is None else int(retention_days * 86400e9)
        self._size = queue_size
        self._prune_s = prune_interval_s
        self._retry_s = retry_s
        self._opener = opener
        self._clock = clock_ns
        # Also queue each message for the MQTT bridge (history.OUTBOX), tell it after each
        # commit, and hand it what the history refuses; a reload that turns MQTT on or off
        # sets all three.
        self.outbox = outbox
        self.on_commit = on_commit
        self.on_refused = on_refused
        self._outbox_last = 0  # the outbox's last seq: what a message handed over follows
        self._locked = False  # the last refusal was another connection's lock
        self._cond = threading.Condition()
        self._queue: collections.deque[EventMessage] = collections.deque()
        self._in_flight = 0
        self._submits = 0  # +1 per submit: a wait for the next try misses none
        self._handed_at = 0  # _submits when the queue was last handed over
        self._state = OK
        self.written = 0  # messages committed
        self.dropped = 0  # updates dropped: queue full
        self.lost = 0  # starts/ends dropped: queue full of nothing else
        self.errors = 0  # messages whose write failed
        self.crash_closed = 0  # events closed with end_reason crash at start
        self.shutdown_closed = 0  # still open after the drain at stop, closed with shutdown
        self.pruned = 0

    @property
    def state(self) -> str:
        """"ok", or why the history is not being written now (for the status)."""
        return self._state

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, msg: EventMessage, history_only: bool = False) -> None:
        """Queue ``msg`` for writing; never blocks on the disk (the lock is held for an append,
        or a scan of the queue when it is full). ``history_only``: a message nobody was sent
        (kept out of the outbox)."""
        if history_only:
            msg = _history_only(msg)
        with self._cond:
            q = self._queue
            if len(q) >= self._size and not self._drop_oldest_update(msg):
                return
            q.append(msg)
            self._submits += 1
            self._cond.notify()

    def _hand_over(self, msgs: list[EventMessage]) -> list[EventMessage]:
        """Messages the history does not have now go to ``on_refused`` (the MQTT bridge, which
        sends them live after the outbox's messages up to the seq given); returned as
        HistoryOnly, so that the outbox never gets them too."""
        hand, out = self.on_refused, []
        for m in msgs:
            if hand is not None and self.outbox and not isinstance(m, HistoryOnly):
                hand(m, self._outbox_last)
                m = _history_only(m)
            out.append(m)
        return out

    def _hand_over_queued(self) -> None:
        """The history is failing: everything queued goes to the bridge now, oldest first (this
        thread alone hands messages over, so their order holds), encoded by the bridge outside
        the queue's lock (submit never waits for that)."""
        with self._cond:
            self._handed_at = self._submits
            todo = [m for m in self._queue if not isinstance(m, HistoryOnly)]
        if not todo or self.on_refused is None or not self.outbox:
            return
        done = {id(m): h for m, h in zip(todo, self._hand_over(todo), strict=True)}
        with self._cond:  # (todo holds its messages: no id is reused meanwhile)
            q = self._queue
            for i, m in enumerate(q):
                h = done.get(id(m))
                if h is not None:
                    q[i] = h

    def _drop_oldest_update(self, incoming: EventMessage) -> bool:
        """Make room for ``incoming`` in a full queue; False: drop ``incoming`` instead."""
        q = self._queue
        for i, m in enumerate(q):
            if m.phase == "update":
                del q[i]
                self.dropped += 1
                return True
        if incoming.phase == "update":  # only starts and ends queued: they matter more
            self.dropped += 1
            return False
        if len(q) >= 2 * self._size:
            q.popleft()
            self.lost += 1
            if self.lost == 1:
                logger.warning("event history: queue full of starts and ends (is %s "
                               "writable?); dropping the oldest", self.path)
        return True

    def stop(self) -> None:
        """Ask the thread to write what is queued, close the events still open (shutdown) and
        end; `join` waits for it."""
        with self._cond:
            self._stop.set()
            self._cond.notify()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted so far has been written (or failed); False on
        timeout. For tests and an orderly shutdown; the inference thread never calls it."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
            return True

    # --- the thread --------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self._state:
            if state == OK:
                logger.info("event history %s: writing again", self.path)
            else:
                logger.error("%s", state)  # once per new reason, not per batch
            self._state = state

    def _failed(self, e: BaseException) -> None:
        msg = str(e) if isinstance(e, HistoryError) else f"event history {self.path}: " \
                                                           f"{first_line(e)}"
        self._set_state(msg)

    def _open(self) -> sqlite3.Connection | None:
        try:
            conn = self._opener(self.path)
        except (HistoryError, sqlite3.Error, OSError) as e:
            self._failed(e)
            return None
        try:
            self.crash_closed += close_orphans(conn, "crash", self._clock(), self.outbox)
            if self.crash_closed and self.on_commit is not None:
                self.on_commit()
            if self.crash_closed:
                logger.warning("event history: %d events left open by a crash, closed",
                               self.crash_closed)
        except sqlite3.Error as e:
            self._failed(e)
        self._note_outbox(conn)  # (the outbox may hold a backlog from before, and crash ends)
        return conn

    def _take(self, timeout_s: float) -> list[EventMessage]:
        with self._cond:
            if not self._queue and not self._stop.is_set():
                self._cond.wait(max(0.0, timeout_s))
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._in_flight = len(batch)
            return batch

    def _done(self) -> None:
        with self._cond:
            self._in_flight = 0
            self._cond.notify_all()

    def _commit(self, conn: sqlite3.Connection, batch: list[EventMessage]) -> bool:
        """One transaction; False: the history refuses writes for now (full, read-only,
        locked, an I/O error: SQLite's OperationalError, which may pass)."""
        try:
            with conn:
                for msg in batch:
                    record(conn, msg, self.outbox and not isinstance(msg, HistoryOnly))
        except sqlite3.OperationalError as e:
            self._failed(e)
            self._locked = "locked" in str(e) or "busy" in str(e)
            return False
        except Exception as e:  # a value SQLite cannot hold, a corrupt file: never fatal
            self.errors += len(batch)
            self._failed(e)
            self._hand_over(batch)
        else:
            self.written += len(batch)
            self._set_state(OK)
            self._note_outbox(conn)
            if self.on_commit is not None:
                self.on_commit()
        return True

    def _note_outbox(self, conn: sqlite3.Connection) -> None:
        if self.outbox:
            with contextlib.suppress(sqlite3.Error):  # a read; on failure the last one stands
                self._outbox_last = outbox_last(conn)

    def _write(self, conn: sqlite3.Connection, batch: list[EventMessage]) -> list[EventMessage]:
        """Commit ``batch``; returns what the history refused for now (to try again later).
        A refused batch is tried again a message at a time, in order, up to the first one
        refused: on a nearly full disk the small rows that fit still land, and no message
        is written before an earlier one of its event."""
        if self._commit(conn, batch):
            return []
        if len(batch) > 1 and not self._locked:  # (each try would wait out the busy timeout)
            for i, msg in enumerate(batch):
                if not self._commit(conn, [msg]):
                    return batch[i:]
            return []
        return batch

    def _requeue(self, batch: list[EventMessage]) -> None:
        """Put what the history refused back at the head of the queue, in order; the queue's
        bound (2 x queue_size, updates dropped first) holds again afterwards."""
        with self._cond:
            q = self._queue
            q.extendleft(reversed(batch))
            while len(q) > 2 * self._size:
                for i, m in enumerate(q):
                    if m.phase == "update":
                        del q[i]
                        self.dropped += 1
                        break
                else:
                    q.popleft()
                    self.lost += 1

    def _pause(self, seconds: float) -> None:
        """Wait before trying a refused write again (a stop ends the wait, and so does a
        message submitted since the last hand-over, even one submitted just before)."""
        with self._cond:
            if not self._stop.is_set() and self._submits == self._handed_at:
                self._cond.wait(seconds)

    def _prune(self, conn: sqlite3.Connection) -> None:
        if self._retention_ns is None:
            return
        try:
            self.pruned += prune(conn, self._clock() - self._retention_ns)
        except sqlite3.Error as e:
            self._failed(e)

    def _run(self) -> None:
        conn = self._open()
        next_open = time.monotonic() + self._retry_s
        if conn is not None:
            self._prune(conn)
        next_prune = time.monotonic() + self._prune_s
        retry_at = 0.0  # a write was refused: the queue waits until then
        try:
            while True:
                now = time.monotonic()
                if now < retry_at and not self._stop.is_set():
                    self._hand_over_queued()  # what came since: to MQTT at once, in order
                    self._pause(retry_at - now)
                    continue
                if self._stop.is_set() and self._state != OK:
                    self._hand_over_queued()  # before the last try, which may hang on a lock
                wake = next_prune if conn is not None else next_open
                batch = self._take(wake - now)
                if conn is None and (time.monotonic() >= next_open or self._stop.is_set()):
                    conn = self._open()
                    next_open = time.monotonic() + self._retry_s
                if batch:
                    refused = batch if conn is None else self._write(conn, batch)
                    if refused and self._stop.is_set():  # the last try: counted, not kept
                        self._hand_over(refused)
                        self.errors += len(refused)
                    elif refused:
                        self._requeue(refused)
                        self._hand_over_queued()
                        retry_at = time.monotonic() + self._retry_s
                    self._done()
                if conn is not None and time.monotonic() >= next_prune:
                    self._prune(conn)
                    next_prune = time.monotonic() + self._prune_s
                if self._stop.is_set() and not self.queued:
                    break
            if conn is not None:
                try:
                    self.shutdown_closed = close_orphans(conn, "shutdown", self._clock(),
                                                         self.outbox)
                except sqlite3.Error as e:
                    self._failed(e)
        finally:
            self._done()
            if conn is not None:
                conn.close()
