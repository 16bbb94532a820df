"""The hand-offs between the pipeline's threads, and who counts what.

Real threads and real ZeroMQ sockets on loopback; nothing asserts a rate or a duration: waits
are for events, with deadlines that only bound a failing test.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from edged.api.messages import (
    Detection,
    DetMessage,
    EventMessage,
    FrameSize,
    Latency,
    Percentiles,
    SourceStatus,
    StatusMessage,
    decode,
)
from edged.config import PublishConfig
from edged.pipeline.publish import QUEUE_SIZE, Publisher
from edged.pipeline.slot import Frame, LatestFrameSlot
from edged.pipeline.stats import PipelineStats
from edged.pipeline.worker import Lane, WeightedRoundRobin
from tests.daemon_util import free_port

DEADLINE_S = 30.0  # bounds a failing test only
LAT = Latency(1.0, 2.0, 3.0, 6.0)


class Clock:
    """Monotonic seconds that move only when the test says so (PipelineStats' clock seam).
    Steps are binary fractions (1/8 s...), so the sums are exact and no frame straddles the
    window's edge by a rounding error."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _frame(seq: int) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), seq, seq, seq)


# --- the latest-frame slot -----------------------------------------------------------------------

def test_slot_keeps_the_newest_frame_and_counts_the_replaced_ones() -> None:
    stats = PipelineStats()
    slot = LatestFrameSlot(stats)
    for seq in range(3):
        slot.put(_frame(seq))
    got = slot.get(0.0)
    assert got is not None and got.seq == 2
    assert slot.get(0.0) is None  # taken: empty again
    snap = stats.snapshot()
    assert (snap.frames_in, snap.frames_dropped, snap.frames_out) == (3, 2, 0)


def test_slot_counts_every_frame_as_taken_or_dropped_across_threads() -> None:
    """A producer and a consumer thread race: each frame put is taken exactly once or counted
    as dropped exactly once, and the consumer never sees an older frame after a newer one."""
    stats = PipelineStats()
    slot = LatestFrameSlot(stats)
    n = 5000
    taken: list[int] = []
    produced = threading.Event()

    def consume() -> None:
        while True:
            done = produced.is_set()  # read before the get: then an empty get means the end
            frame = slot.get(0.01)
            if frame is not None:
                taken.append(frame.seq)
            elif done:
                return

    def produce() -> None:
        for seq in range(n):
            slot.put(_frame(seq))
            if seq % 64 == 0:
                time.sleep(0)  # let the consumer in now and then: some frames get through
        produced.set()

    threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive()
    snap = stats.snapshot()
    assert snap.frames_in == n
    assert snap.frames_dropped == n - len(taken)
    assert taken and taken[-1] == n - 1  # the last frame is never lost
    assert all(a < b for a, b in itertools.pairwise(taken))


def test_wait_taken_returns_once_the_consumer_took_the_frame() -> None:
    slot = LatestFrameSlot(PipelineStats())
    slot.put(_frame(0))
    assert not slot.wait_taken(0.0)
    got: list[Frame | None] = []
    consumer = threading.Thread(target=lambda: got.append(slot.get(DEADLINE_S)))
    consumer.start()
    assert slot.wait_taken(DEADLINE_S)
    consumer.join(DEADLINE_S)
    assert got and got[0] is not None and got[0].seq == 0


def test_one_condition_wakes_the_consumer_for_any_camera() -> None:
    """The worker waits once for a frame from any camera: slots sharing a condition wake it
    whichever camera's frame comes first."""
    cond = threading.Condition()
    slots = [LatestFrameSlot(PipelineStats(), cond) for _ in range(3)]
    woke: list[int] = []

    def consume() -> None:
        with cond:
            assert cond.wait_for(lambda: any(s.ready for s in slots), DEADLINE_S)
            woke.extend(i for i, s in enumerate(slots) if s.ready and s.take() is not None)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.05)  # (not needed for correctness: a put before the wait is seen by wait_for)
    slots[2].put(_frame(7))
    t.join(DEADLINE_S)
    assert woke == [2] and not slots[2].ready


# --- the scheduler ------------------------------------------------------------------------------

def _lanes(*weights: int) -> list[Lane]:
    return [Lane(f"cam{i}", LatestFrameSlot(PipelineStats()), None, PipelineStats(),  # type: ignore[arg-type]
                 w) for i, w in enumerate(weights)]


def _turns(rr: WeightedRoundRobin, ready: list[Lane], n: int) -> list[str]:
    return [rr.pick(ready).camera for _ in range(n)]


def test_cameras_with_equal_weights_take_turns() -> None:
    lanes = _lanes(1, 1, 1)
    assert _turns(WeightedRoundRobin(), lanes, 9) == ["cam0", "cam1", "cam2"] * 3


def test_a_weight_of_two_gets_two_frames_for_one_interleaved() -> None:
    lanes = _lanes(2, 1)
    got = _turns(WeightedRoundRobin(), lanes, 300)
    assert got.count("cam0") == 200 and got.count("cam1") == 100
    assert "cam1cam1" not in "".join(got)  # never twice in a row: interleaved, not batched
    assert "cam0cam0cam0" not in "".join(got)


def test_a_camera_without_frames_saves_no_credit_for_a_burst() -> None:
    """A camera that had no frame for a while (a reconnect) gets its turn again when it is
    back, but not a burst that would starve the others."""
    lanes = _lanes(1, 1, 1)
    rr = WeightedRoundRobin()
    _turns(rr, lanes[:2], 101)  # cam2 away; cam0 and cam1 alternate
    back = _turns(rr, lanes, 30)
    assert max(back.count(c) for c in ("cam0", "cam1", "cam2")) - \
        min(back.count(c) for c in ("cam0", "cam1", "cam2")) <= 1
    assert "cam2cam2" not in "".join(back)


def test_a_camera_slower_than_its_share_waits_at_most_one_turn_of_the_others() -> None:
    """A debt from its last frame must not make a slow camera's next frame wait for several
    rounds (with 8 equal cameras it waited 7 inferences, dropping frames meanwhile)."""
    lanes = _lanes(*[1] * 8)
    rr = WeightedRoundRobin()
    for _ in range(20):
        waited = 0
        while rr.pick(lanes).camera != "cam7":  # the slow camera's frame is there
            waited += 1
            assert waited <= 7
        _turns(rr, lanes[:7], 30)  # its next frame is a while away; the others run


# --- the stats -----------------------------------------------------------------------------------

def test_snapshot_has_no_side_effect() -> None:
    clock = Clock()
    stats = PipelineStats(clock=clock, rate_window_s=2.0)
    slot = LatestFrameSlot(stats)
    for i in range(16):  # 8 fps for 2 s
        clock.t += 0.125
        slot.put(_frame(i))
        slot.get(0.0)
        stats.record(LAT)
    first = stats.snapshot()
    again = [stats.snapshot() for _ in range(5)]  # a burst of state-change statuses
    assert all(s == first for s in again)
    assert first.fps_in == 8.0 and first.fps_out == 8.0
    assert (first.frames_in, first.frames_out, first.frames_dropped) == (16, 16, 0)
    assert first.latency_ms["total"] == Percentiles(6.0, 6.0, 6.0)


@pytest.mark.parametrize(("fps", "seconds", "idle_s", "expected"), [
    (8.0, 5.0, 0.0, 8.0),  # steady
    (32.0, 5.0, 0.0, 32.0),
    (8.0, 5.0, 1.0, 4.0),  # stopped 1 s ago: half of the 2 s window has frames
    (8.0, 5.0, 3.0, 0.0),  # stopped longer than the window: no rate
    (8.0, 1.0, 0.0, 8.0),  # started less than a window ago: over the time since start
    (1024.0, 3.0, 0.0, 1024.0),  # more frames than the history keeps: a shorter window
])
def test_fps_is_a_rolling_rate(fps: float, seconds: float, idle_s: float,
                               expected: float) -> None:
    clock = Clock()
    stats = PipelineStats(clock=clock, rate_window_s=2.0)
    for _ in range(round(fps * seconds)):
        clock.t += 1 / fps
        stats.record(LAT)
    clock.t += idle_s
    assert stats.snapshot().fps_out == pytest.approx(expected, rel=1e-3)
    assert stats.snapshot().fps_in == 0.0  # nothing came in through a slot


def test_rates_move_with_the_window_not_with_reads() -> None:
    """The old rates() reset its window on every read: a status sent on a state change made the
    next periodic one report the rate of a few milliseconds."""
    clock = Clock()
    stats = PipelineStats(clock=clock, rate_window_s=2.0)
    for step in range(100):
        clock.t += 0.0625  # 16 fps
        stats.record(LAT)
        if step % 7 == 0:
            stats.snapshot()
    assert stats.snapshot().fps_out == 16.0


def test_load_is_the_busy_share_of_the_window() -> None:
    clock = Clock()
    stats = PipelineStats(clock=clock, rate_window_s=2.0)
    for _ in range(32):  # 16 fps, 6 ms each: busy 96 ms of every second
        clock.t += 0.0625
        stats.record(LAT)
    assert stats.snapshot().load == pytest.approx(0.096)
    clock.t += 3.0
    assert stats.snapshot().load == 0.0


def test_stats_reject_an_empty_window() -> None:
    with pytest.raises(ValueError, match="window"):
        PipelineStats(window=0)


# --- the publisher's drop policy --------------------------------------------------------------

def _status(seq: int = 0) -> StatusMessage:
    return StatusMessage(
        camera="cam", seq=seq, state="running", ts_ns=0, uptime_s=0.0, model="m",
        backend="cpu", fallback_reason=None, runtime="test", fps_in=0.0, fps_out=0.0,
        frames_in=0, frames_out=0, frames_dropped=0,
        source=SourceStatus(uri="test", reason=None, reconnects=0, size=None), latency_ms={},
        occupancy=None, publish_dropped=0, endpoints=(), reload=None)


def _det(seq: int, boxes: int = 0) -> DetMessage:
    dets = tuple(Detection(0, "bird", 0.5, (1.0, 2.0, 3.0, 4.0), (0.1, 0.2, 0.3, 0.4))
                 for _ in range(boxes))
    return DetMessage("cam", seq, seq, 0, FrameSize(640, 480), "m", "cpu", LAT, dets)


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _subscriber(ctx: zmq.Context[zmq.Socket[bytes]], ep: str,
                **opts: int) -> zmq.Socket[bytes]:
    sub = ctx.socket(zmq.SUB)
    for name, value in opts.items():
        sub.setsockopt(getattr(zmq, name), value)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ep)
    return sub


def _wait_status(sub: zmq.Socket[bytes], pub: Publisher | None = None) -> None:
    """Once a status arrives the subscription is in (the publisher sends one every interval,
    or, given ``pub``, one per try here)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if pub is not None:
            pub.send_status([_status()])
        assert time.monotonic() < deadline, "no status arrived"
        if sub.poll(100) and isinstance(decode(sub.recv_multipart()[1]), StatusMessage):
            return


def _recv_dets(sub: zmq.Socket[bytes], n: int) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(seqs) < n:
        assert sub.poll(max(int((deadline - time.monotonic()) * 1000), 1)), seqs
        msg = decode(sub.recv_multipart()[1])
        if isinstance(msg, DetMessage):
            seqs.append(msg.seq)
    return seqs


@contextlib.contextmanager
def _stalled_publisher(zctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[
        tuple[Publisher, zmq.Socket[bytes], threading.Event]]:
    """A running publisher whose thread is held inside its status callback (a seam to stall
    it: nothing leaves its queue) until the yielded event is set; and a subscriber."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    hold, held, release = threading.Event(), threading.Event(), threading.Event()

    def status() -> list[StatusMessage]:  # runs in the publisher's thread
        if hold.is_set():
            held.set()
            release.wait(DEADLINE_S)
        return [_status()]

    pub = Publisher(PublishConfig(endpoints=(ep,), status_interval_s=0.05), status)
    pub.bind()
    pub.start()
    try:
        sub = _subscriber(zctx, ep)
        _wait_status(sub)
        hold.set()
        assert held.wait(DEADLINE_S)  # the publisher thread is stalled
        yield pub, sub, release
    finally:
        hold.clear()
        release.set()
        pub.stop()
        assert pub.join(DEADLINE_S)


def test_a_full_queue_drops_the_oldest_message_and_counts_it(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    with _stalled_publisher(zctx) as (pub, sub, release):
        extra = 5
        for seq in range(QUEUE_SIZE + extra):
            pub.submit(_det(seq))  # never blocks, even with nobody taking
        assert pub.dropped == extra
        release.set()
        assert _recv_dets(sub, QUEUE_SIZE) == list(range(extra, QUEUE_SIZE + extra))
        assert pub.dropped == extra


def test_a_full_queue_drops_detections_before_an_event(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """One event message among a frame-rate stream of dets: when the publisher falls behind,
    the dets go (a newer frame follows), the event stays."""
    with _stalled_publisher(zctx) as (pub, sub, release):
        event = EventMessage("cam", 0, "start", "e1", "bird", 1, 1, None, 0.0, False, 0.5,
                             (0.1, 0.1, 0.2, 0.2), (), (), None, None)
        pub.submit(_det(0))
        pub.submit(event)
        extra = 3 * QUEUE_SIZE
        for seq in range(1, QUEUE_SIZE + extra - 1):  # QUEUE_SIZE + extra messages in all
            pub.submit(_det(seq))
        assert pub.dropped == extra
        release.set()
        got: list[Any] = []
        deadline = time.monotonic() + DEADLINE_S
        while len([m for m in got if isinstance(m, DetMessage)]) < QUEUE_SIZE - 1:
            assert sub.poll(max(int((deadline - time.monotonic()) * 1000), 1)), got
            msg = decode(sub.recv_multipart()[1])
            if not isinstance(msg, StatusMessage):
                got.append(msg)
        assert got[0] == event  # the oldest message left, and first out
        assert [m.seq for m in got[1:]] == list(range(extra, QUEUE_SIZE + extra - 1))


def test_a_subscriber_that_does_not_read_stalls_nobody(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """At its SNDHWM ZeroMQ drops for the slow subscriber only: the publisher never blocks
    (it drops nothing itself), and a reading subscriber gets every message, in order."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(PublishConfig(endpoints=(ep,), sndhwm=4, status_interval_s=3600),
                    lambda: [_status()])
    pub.bind()
    pub.start()
    try:
        stalled = _subscriber(zctx, ep, RCVHWM=1, RCVBUF=4096)
        reader = _subscriber(zctx, ep)
        _wait_status(stalled, pub)  # subscribed; from now on it reads nothing
        _wait_status(reader, pub)
        n = 1500  # ~10 KB each: far more than the stalled peer's HWM and socket buffers hold
        for seq in range(n):
            pub.submit(_det(seq, boxes=100))
            assert _recv_dets(reader, 1) == [seq]  # in lockstep: the queue never fills
        assert pub.dropped == 0 and pub.is_alive()
        got = 0
        while stalled.poll(500):  # what reached the stalled peer before ZeroMQ dropped for it
            got += isinstance(decode(stalled.recv_multipart()[1]), DetMessage)  # (no more come)
        assert got < n
    finally:
        pub.stop()
        assert pub.join(DEADLINE_S)


def test_status_seq_follows_the_order_messages_leave_in(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """Snapshots are taken on several threads (state changes) and on the publisher's (the
    periodic one): numbered when taken, they went out of order (35, 38, 36...), which a
    subscriber reads as lost messages. Numbered as they leave, per topic, they never do."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(PublishConfig(endpoints=(ep,), status_interval_s=0.05), lambda: [_status()])
    pub.bind()
    pub.start()
    try:
        sub = _subscriber(zctx, ep)
        _wait_status(sub)
        stop = threading.Event()

        def changes() -> None:
            while not stop.is_set():
                pub.send_status([_status(seq=12345)])  # a snapshot's own number is ignored
                time.sleep(0.001)

        t = threading.Thread(target=changes)
        t.start()
        seqs: list[int] = []
        try:
            while len(seqs) < 300:
                assert sub.poll(int(DEADLINE_S * 1000)), seqs[-5:]
                msg = decode(sub.recv_multipart()[1])
                if isinstance(msg, StatusMessage):
                    seqs.append(msg.seq)
        finally:
            stop.set()
            t.join(DEADLINE_S)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        pub.stop()
        assert pub.join(DEADLINE_S)
