"""Hostile peers churning on the PUB port under a CPU hog (issue 10, finding 1 as a class).

Without a cap, one 10 MB SUBSCRIBE from any TCP peer cost the daemon ~1 GB for good and stalled
publishing for ~15 s. Here ``PEERS`` raw-TCP peers (benchmarks/churn.py: ZMTP 3.0 written by
hand) connect in a loop for ``CHURN_S`` seconds, each sending an oversized SUBSCRIBE, a frame
header lying about its size, an oversized READY, a greeting with an unknown mechanism, half a
greeting or nothing, and closing with a RST, while one busy process per core competes for the
CPU. What holds on any machine is asserted: the daemon lives, det messages reach a good
subscriber in every window of the length the measured speed allows, its memory stays bounded,
SIGTERM during the churn exits 0 within 2 s. The figures (RSS against the +20 MB target, det
messages per window, connections) are benchmarks/churn.py's.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path

from benchmarks.churn import PEER_KINDS, Hog, PeerChurn, rss_mb
from edged.media import SAMPLE_CLIP
from tests.daemon_util import Daemon, Listener, free_port, is_det, write_config
from tests.timing import Speed, sample_clip

PEERS = 100
CHURN_S = 20.0
HUGE_BYTES = 4 << 20  # each oversized frame; uncapped, one such SUBSCRIBE cost ~400 MB
# Not the +20 MB target (a figure of benchmarks/churn.py, which depends on the allocator and
# libzmq's buffers): a bound that no amount of churn reaches when peers are capped, and that one
# uncapped oversized frame exceeds several times over.
RSS_BOUND_MB = 100.0
STOP_BOUND_S = 2.0  # issue requirement: SIGTERM -> exit 0 within 2 s (signal to exit)


def _longest_gap(sub: Listener, t0: float, t1: float) -> tuple[float, str]:
    """The longest time in [t0, t1] (time.time() clock) without a det message at ``sub``, and
    where it was (seconds after t0, the seq/frame_seq of the messages around it)."""
    dets = [(t0, None), *((t / 1e9, m) for topic, m, t in sub.messages
                          if topic.startswith("det/") and t0 <= t / 1e9 <= t1), (t1, None)]
    (a, ma), (b, mb) = max(itertools.pairwise(dets), key=lambda p: p[1][0] - p[0][0])

    def where(m: dict[str, object] | None) -> str:
        return "-" if m is None else f"seq {m['seq']}/frame {m['frame_seq']}"

    return b - a, f"from {a - t0:.1f} s ({where(ma)}) to {b - t0:.1f} s ({where(mb)})"


def test_churning_hostile_peers_cost_no_memory_and_never_stall_the_stream(
        tmp_path: Path, speed: Speed) -> None:
    fps = sample_clip().fps
    ep = f"tcp://127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path / "c.yaml",
                       camera={"name": "churn", "source": str(SAMPLE_CLIP), "loop": True,
                               "realtime": True},
                       publish={"endpoints": [ep]})
    # Every window this long has a det message in it: one frame at the clip's pace, with the
    # slack and floor of tests/timing.py (the hog and the peers slow this machine down).
    window_s = speed.deadline(n_frames=1, paced_fps=fps)
    with Daemon(tmp_path, cfg) as d, Listener(ep, topics=("det/",)) as sub:
        sub.wait_until(is_det, speed.start_deadline(), "the first det message")
        # Settled: a couple of seconds of the clip through the whole pipeline.
        sub.wait_count(is_det, int(2 * fps), speed.deadline(n_frames=int(2 * fps), paced_fps=fps),
                       "det messages before the churn", since=len(sub.messages))
        idle = []
        for _ in range(3):
            idle.append(rss_mb(d.proc.pid))
            sub.poll_for(0.3)
        idle_mb = statistics.median(idle)

        peak_mb = idle_mb
        with Hog(os.cpu_count() or 1) as hog, \
                PeerChurn(ep, PEERS, CHURN_S + window_s + 30, HUGE_BYTES) as churn:
            t0 = time.time()
            while time.time() - t0 < CHURN_S:
                sub.poll_for(0.25)
                peak_mb = max(peak_mb, rss_mb(d.proc.pid))
                assert d.proc.poll() is None, f"edged died during the churn:\n{d.stderr[-2000:]}"
                if peak_mb - idle_mb > RSS_BOUND_MB:  # stop before it takes the machine down
                    break
            t1 = time.time()
            hog.stop()
            # SIGTERM while the peers go on churning.
            code, took = d.stop()
            assert churn.running(), "the churn ended before SIGTERM"
            connections = churn.stop()

    assert peak_mb - idle_mb <= RSS_BOUND_MB, (
        f"RSS grew from {idle_mb:.0f} to {peak_mb:.0f} MB in {t1 - t0:.1f} s of churn "
        f"({connections})")
    gap, where = _longest_gap(sub, t0, t1)
    assert gap < window_s, (f"no det message for {gap:.1f} s during the churn, {where} "
                            f"({connections})\n{d.stderr[-2000:]}")
    # The peers did what they are for: every kind got connections through to misbehaving.
    for kind in PEER_KINDS:
        done = sum(n for k, n in connections.items()
                   if k.split("/")[0] == kind and k.split("/")[1] not in ("refused", "error"))
        assert done > 0, f"no {kind} peer got through: {connections}"
    assert code == 0, d.stderr[-2000:]
    assert took < STOP_BOUND_S, f"SIGTERM during the churn: exit after {took:.2f} s"
    assert "Traceback" not in d.stderr, d.stderr[-2000:]
