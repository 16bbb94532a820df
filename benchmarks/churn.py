#!/usr/bin/env python3
"""Hostile churn (issue 10): the daemon's RSS and its det stream while raw-TCP peers churn on the
PUB port with oversized frames, under a CPU hog.

    .venv/bin/python benchmarks/churn.py [--seconds 60] [--peers 100] [--hog N] [--huge-mb 8]
                                         [--kinds huge-subscribe,lying-header,...] [--json]

Issue 10 acceptance: under a CPU hog and with 100 churning raw-TCP peers sending oversized frames
for 60 s, RSS stays within +20 MB of its idle value and det messages keep flowing.

What it does: `edged run` on the bundled clip (paced, looping) publishing on a free tcp port;
after a warm-up its idle RSS (VmRSS, median of a few samples); then a CPU hog (stress-ng if
installed, else one busy process per core) and ``--peers`` threads in another process, each
opening raw TCP connections to the PUB port in a loop, speaking ZMTP 3.0 by hand (so that no
ZeroMQ library on our side limits what is sent), misbehaving in one of the ``PEER_KINDS`` ways and
closing abruptly (RST). A real ZeroMQ SUB (edged.api.client.Subscriber) counts det messages per 5 s
window meanwhile. Then the RSS after the churn (settled) and the exit code at SIGTERM.
Figures printed, nothing asserted (tests/test_churn.py checks what holds on any machine).
Printed besides: the mappings whose RSS grew (glibc's per-thread arenas show as 64/128 MB
"[anon]" mappings), CPU seconds per daemon thread, open fds, seq/frame_seq gaps.

``--kinds`` also takes the EXTRA_KINDS below: hostile input that ZeroMQ's MAXMSGSIZE does not
bound because every frame is under the cap (e.g. ``--kinds many-subscriptions --huge-mb
0.0625``); ``--abort-mb`` stops the churn before such a run takes the machine down.

The raw-ZMTP helpers here (``GREETING``, ``ready``, ``frame_header``, ``peer_once``,
``PeerChurn``) are imported by tests/test_churn.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# --- raw ZMTP 3.0, written by hand --------------------------------------------------------------

# signature (0xff, 8 bytes padding, 0x7f), version 3.0, mechanism NULL, as-server 0, filler
GREETING = (b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0"
            + b"\0" * 31)
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
SUBSCRIBE = b"\x01"  # ZMTP 3.0: a subscription is a message whose first byte is 1


def frame_header(size: int, *, more: bool = False, command: bool = False) -> bytes:
    """The flags and size of one ZMTP 3.0 frame of ``size`` bytes (short or long form)."""
    flags = (MORE if more else 0) | (COMMAND if command else 0)
    if size < 256:
        return bytes([flags, size])
    return bytes([flags | LONG]) + struct.pack(">Q", size)


def ready(socket_type: bytes = b"SUB") -> bytes:
    """A whole READY command frame (NULL mechanism) announcing ``socket_type``."""
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return frame_header(len(body), command=True) + body


def _recv_exactly(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def handshake(s: socket.socket) -> bool:
    """Greeting both ways, then our READY as a SUB; False if the server closed on us."""
    s.sendall(GREETING)
    if _recv_exactly(s, 64) is None:
        return False
    s.sendall(ready())
    return True


def _stream(s: socket.socket, header: bytes, body_size: int, first: bytes = b"") -> bool:
    """Send a frame header and ``body_size`` bytes of body in 64 KiB writes; True if the server
    took all of it, False if it cut us off first (what a size cap does)."""
    chunk = b"x" * 65536
    try:
        s.sendall(header + first)
        left = body_size - len(first)
        while left > 0:
            s.sendall(chunk[:left])
            left -= len(chunk)
    except OSError:
        return False
    return True


def _rst_close(s: socket.socket) -> None:
    """Close abruptly: RST instead of FIN (no TIME_WAIT on our side either)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


# How each peer misbehaves; one per connection, in turn.
#   huge-subscribe   greeting, READY, then one SUBSCRIBE message of --huge-mb MB (the bug of
#                    finding 1: one 10 MB topic cost ~1 GB for good)
#   lying-header     greeting, READY, then a long-frame header claiming 2**62 bytes and 64 KiB
#                    of garbage
#   huge-ready       greeting, then a READY command claiming --huge-mb MB (the handshake path)
#   bad-greeting     a ZMTP 3.0 signature with an unknown mechanism, then 64 KiB of garbage
#   half-greeting    the first 11 bytes of a greeting, then nothing
#   silent           connect, send nothing, hold the connection up to 0.5 s
#   random-bytes     64 KiB of random bytes instead of a greeting: before every peer went
#                    through ZAP, libzmq took a first byte other than 0xff for the ZMTP 1.0
#                    framing, and random frames starting with 0x01 for subscriptions (+1 GB)
PEER_KINDS = ("huge-subscribe", "lying-header", "huge-ready", "bad-greeting", "half-greeting",
              "silent", "random-bytes")
# Siblings that MAXMSGSIZE does not bound (each frame is under the cap), not in the default set:
#   many-subscriptions  greeting, READY, then --huge-mb MB of distinct 255-byte SUBSCRIBEs,
#                    held up to 0.5 s (libzmq keeps every distinct topic in a trie)
#   multipart-flood  greeting, READY, then one multipart message of 4000-byte frames totalling
#                    --huge-mb MB, never finished (the pipe's HWM counts whole messages only)
EXTRA_KINDS = ("many-subscriptions", "multipart-flood")


def peer_once(host: str, port: int, kind: str, huge_bytes: int, rng: random.Random,
              timeout_s: float = 10.0) -> str:
    """One connection misbehaving as ``kind``; returns what happened: "cut" (the server
    dropped us mid-send), "sent" (it took everything), "closed" (it closed during the greeting),
    "refused"/"error" (no connection)."""
    try:
        s = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "error"
    try:
        if kind == "silent":
            time.sleep(rng.uniform(0.0, 0.5))
            return "sent"
        if kind == "half-greeting":
            s.sendall(GREETING[:11])
            time.sleep(rng.uniform(0.0, 0.2))
            return "sent"
        if kind == "random-bytes":
            return "sent" if _stream(s, rng.randbytes(65536), 0) else "cut"
        if kind == "bad-greeting":
            bad = GREETING[:12] + b"EVIL".ljust(20, b"\0") + GREETING[32:]
            if not _stream(s, bad, 0) or _recv_exactly(s, 64) is None:
                return "closed"
            return "sent" if _stream(s, rng.randbytes(65536), 0) else "cut"
        if kind == "huge-ready":
            s.sendall(GREETING)
            if _recv_exactly(s, 64) is None:
                return "closed"
            return "sent" if _stream(s, frame_header(huge_bytes, command=True), huge_bytes,
                                     b"\x05READY") else "cut"
        if not handshake(s):
            return "closed"
        if kind == "huge-subscribe":
            topic = SUBSCRIBE + b"det/"
            return "sent" if _stream(s, frame_header(huge_bytes), huge_bytes, topic) else "cut"
        if kind == "lying-header":
            return "sent" if _stream(s, frame_header(1 << 62) + rng.randbytes(65536), 0) \
                else "cut"
        if kind == "many-subscriptions":
            msgs = []
            for _ in range(huge_bytes // 256):
                body = SUBSCRIBE + rng.randbytes(255)
                msgs.append(frame_header(len(body)) + body)
            s.sendall(b"".join(msgs))
            time.sleep(rng.uniform(0.0, 0.5))
            return "sent"
        if kind == "multipart-flood":
            part = frame_header(4000, more=True) + b"\x02" + b"y" * 3999
            burst = part * 16
            try:
                for _ in range(max(huge_bytes // len(burst), 1)):
                    s.sendall(burst)
            except OSError:
                return "cut"
            return "sent"
        raise ValueError(f"unknown peer kind {kind!r}")
    except OSError:
        return "cut"
    finally:
        _rst_close(s)


def _peer_process(host: str, port: int, peers: int, seconds: float, huge_bytes: int,
                  kinds: tuple[str, ...], stop: Any, out: Connection) -> None:
    """In its own process: ``peers`` threads churning connections until ``seconds`` pass or
    ``stop`` is set; sends back {"kind/outcome": count}."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def peer(i: int) -> None:
        rng = random.Random(i)
        n = i
        while time.monotonic() < deadline and not stop.is_set():
            kind = kinds[n % len(kinds)]
            n += 1
            outcome = peer_once(host, port, kind, huge_bytes, rng)
            with lock:
                counts[f"{kind}/{outcome}"] += 1
            if outcome in ("refused", "error"):
                time.sleep(0.05)

    threads = [threading.Thread(target=peer, args=(i,), daemon=True) for i in range(peers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send(dict(counts))
    out.close()


class PeerChurn:
    """``peers`` churning raw-TCP peers in a child process (spawned: no ZeroMQ context or
    threads of ours are inherited), for ``seconds`` or until ``stop()``."""

    def __init__(self, endpoint: str, peers: int, seconds: float, huge_bytes: int,
                 kinds: Iterable[str] = PEER_KINDS) -> None:
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_peer_process, daemon=True,
                                 args=(host, int(port), peers, seconds, huge_bytes,
                                       tuple(kinds), self._stop, send))
        self._proc.start()
        send.close()
        self.counts: dict[str, int] = {}
        self._stopped = False

    def running(self) -> bool:
        return self._proc.is_alive()

    def stop(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Stop (or wait for the end of) the churn; returns {"kind/outcome": connections}."""
        if self._stopped:
            return self.counts
        self._stopped = True
        self._stop.set()
        with contextlib.suppress(EOFError, OSError):  # the child died without a report
            if self._recv.poll(timeout_s):
                self.counts = self._recv.recv()
        self._recv.close()
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        return self.counts

    def __enter__(self) -> PeerChurn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a CPU hog ------------------------------------------------------------------------------------

def _spin() -> None:
    while True:
        pass


class Hog:
    """One busy process per core: stress-ng if installed, else spinning Python processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._procs: list[subprocess.Popen[bytes]] = []
        self.tool = "stress-ng" if shutil.which("stress-ng") else "python"
        if workers <= 0:
            return
        if self.tool == "stress-ng":
            cmds = [["stress-ng", "--cpu", str(workers), "--quiet"]]
        else:
            cmds = [[sys.executable, "-c", "while True: pass"]] * workers
        for cmd in cmds:
            self._procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL,
                                                preexec_fn=die_with_parent))

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if self.tool == "stress-ng" else signal.SIGKILL)
        for p in self._procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()

    def __enter__(self) -> Hog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the daemon and what we measure of it -------------------------------------------------------

def die_with_parent() -> None:
    """In a child before exec: SIGKILL it when we die (no orphan daemons or hogs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MB (NaN once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def smaps(pid: int) -> dict[str, tuple[str, int]]:
    """{mapping address range: (name, Rss KiB)} of ``pid`` (anonymous mappings are named
    "[anon]"; glibc's per-thread malloc arenas are among them)."""
    out: dict[str, tuple[str, int]] = {}
    key = ""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return out
    for line in text.splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            key = parts[0]
            out[key] = (parts[5] if len(parts) > 5 else "[anon]", 0)
        elif parts and parts[0] == "Rss:" and key:
            out[key] = (out[key][0], int(parts[1]))
    return out


def smaps_growth(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]],
                 top: int = 5) -> list[str]:
    """The mappings whose RSS grew most between two ``smaps`` snapshots, as text."""
    grew = []
    for k, (name, rss) in after.items():
        old = before.get(k, (name, 0))[1]
        if rss - old > 256:
            grew.append((rss - old, f"{name} {k} {old / 1024:.1f} -> {rss / 1024:.1f} MB"))
    return [text for _, text in sorted(grew, reverse=True)[:top]]


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds used so far by ``pid``'s threads, summed by thread name (libzmq names its
    I/O thread ZMQbg/IO/0; Python threads keep the process's name)."""
    out: Counter[str] = Counter()
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                head, rest = task.joinpath("stat").read_text().rsplit(")", 1)
                fields = rest.split()
                out[head.split("(", 1)[1]] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def rss_median(pid: int, samples: int, interval_s: float) -> float:
    values = []
    for i in range(samples):
        if i:
            time.sleep(interval_s)
        values.append(rss_mb(pid))
    return statistics.median(values)


class DetCounter:
    """A real ZeroMQ SUB (edged.api.client.Subscriber) in its own thread, recording the monotonic
    receive time of every det message."""

    def __init__(self, endpoint: str) -> None:
        self.times: list[float] = []
        self.seqs: list[tuple[int, int, float]] = []  # (seq, frame_seq, capture-to-receipt s)
        self._endpoint = endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="det-counter")
        self._thread.start()

    def _run(self) -> None:
        from edged.api.client import DetMessage, Subscriber

        with Subscriber([self._endpoint], topics=["det/"]) as sub:
            while not self._stop.is_set():
                msg = sub.recv(0.1)
                if isinstance(msg, DetMessage):
                    self.times.append(time.monotonic())
                    self.seqs.append((msg.seq, msg.frame_seq, time.time() - msg.ts_ns / 1e9))

    def wait_first(self, timeout_s: float, alive: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.times and time.monotonic() < deadline and alive():
            time.sleep(0.05)
        return bool(self.times)

    def windows(self, t0: float, t1: float, window_s: float) -> list[int]:
        """Det messages in each whole ``window_s`` window from ``t0`` to ``t1``."""
        n = max(int((t1 - t0) // window_s), 1)
        counts = [0] * n
        for t in self.times:
            k = int((t - t0) // window_s)
            if t0 <= t and k < n:
                counts[k] += 1
        return counts

    def max_gap(self, t0: float, t1: float) -> tuple[float, float]:
        """The longest time from ``t0`` to ``t1`` without a det message, and where it began
        (seconds after ``t0``)."""
        inside = [t for t in self.times if t0 <= t <= t1]
        edges = [t0, *inside, t1]
        gap, start = max((b - a, a - t0) for a, b in itertools.pairwise(edges))
        return gap, start

    def losses(self, t0: float, t1: float) -> dict[str, float]:
        """Between ``t0`` and ``t1``: det messages lost on the way (seq gaps), frames the
        daemon skipped (frame_seq gaps) and the worst capture-to-receipt delay."""
        got = [s for t, s in zip(self.times, self.seqs, strict=True) if t0 <= t <= t1]
        if len(got) < 2:
            return {"seq_lost": float("nan"), "frames_skipped": float("nan"),
                    "max_delay_s": float("nan")}
        return {"seq_lost": sum(b[0] - a[0] - 1 for a, b in itertools.pairwise(got)),
                "frames_skipped": sum(b[1] - a[1] - 1 for a, b in itertools.pairwise(got)),
                "max_delay_s": max(d for _, _, d in got)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(tmp: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    import yaml

    from edged.media import SAMPLE_CLIP

    cfg = {"camera": {"name": "churn", "source": str(SAMPLE_CLIP), "loop": True,
                      "realtime": True},
           "inference": {"threads": threads, "delegate": "cpu"},
           "publish": {"endpoints": [f"tcp://127.0.0.1:{port}"]},
           "log_level": "warning"}
    path = tmp / "churn.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = (tmp / "edged.err").open("w")
    return subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=die_with_parent)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edged-churn-"))
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    out: dict[str, Any] = {"cpus": os.cpu_count(), "peers": args.peers,
                           "seconds": args.seconds, "huge_mb": args.huge_mb,
                           "kinds": args.kinds, "settle_s": args.settle,
                           "load1": os.getloadavg()[0]}
    proc = start_daemon(tmp, port, args.threads)
    counter = DetCounter(endpoint)
    hog: Hog | None = None
    churn: PeerChurn | None = None
    try:
        if not counter.wait_first(120, lambda: proc.poll() is None):
            raise SystemExit(f"edged produced no det message (exit {proc.poll()}):\n"
                             + (tmp / "edged.err").read_text()[-2000:])
        time.sleep(args.warmup)
        out["rss_idle_mb"] = rss_median(proc.pid, 5, 1.0)
        idle_maps = smaps(proc.pid)
        hog = Hog(args.hog)
        out["hog"] = f"{args.hog} x {hog.tool}"
        time.sleep(3.0)
        out["rss_idle_hog_mb"] = rss_median(proc.pid, 3, 1.0)
        cpu0 = thread_cpu_s(proc.pid)
        fds = [open_fds(proc.pid)]
        out["fds_idle"] = fds[0]
        t0 = time.monotonic()
        churn = PeerChurn(endpoint, args.peers, args.seconds, int(args.huge_mb * (1 << 20)),
                          args.kinds.split(","))
        samples = []
        aborted = None
        peak_maps = idle_maps
        while churn.running():
            r = rss_mb(proc.pid)
            if not samples or r > max(x for _, x in samples) + 1:
                peak_maps = smaps(proc.pid)
            samples.append((time.monotonic() - t0, r))
            fds.append(open_fds(proc.pid))
            if proc.poll() is not None:
                aborted = f"edged exited {proc.returncode} during the churn"
                break
            if r - out["rss_idle_mb"] > args.abort_mb:
                aborted = f"RSS above idle + {args.abort_mb} MB: churn stopped"
                break
            time.sleep(0.25)
        t1 = time.monotonic()
        cpu1 = thread_cpu_s(proc.pid)
        out["thread_cpu_s"] = {k: round(v - cpu0.get(k, 0.0), 1) for k, v in cpu1.items()}
        out["fds_max"] = max(fds)
        out["connections"] = churn.stop()
        out["aborted"] = aborted
        out["churn_s"] = t1 - t0
        out["rss_max_mb"] = max(r for _, r in samples)
        out["rss_max_at_s"] = max(samples, key=lambda s: s[1])[0]
        out["grown_at_peak"] = smaps_growth(idle_maps, peak_maps)
        out["rss_samples"] = [round(r, 1) for _, r in samples[::4]]
        out["det_per_window"] = counter.windows(t0, t1, args.window)
        out["det_max_gap_s"], out["det_max_gap_at_s"] = counter.max_gap(t0, t1)
        out.update(counter.losses(t0, t1))
        hog.stop()
        time.sleep(args.settle)
        out["det_in_settle"] = len([t for t in counter.times if t > t1])
        out["rss_after_mb"] = rss_median(proc.pid, 5, 1.0)
        out["grown_after"] = smaps_growth(idle_maps, smaps(proc.pid))
        ts = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out["exit_code"] = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out["exit_code"] = f"killed after 10 s ({proc.wait()})"
        out["stop_s"] = time.monotonic() - ts
        err = (tmp / "edged.err").read_text()
        out["stderr_tail"] = err[-1500:]
    finally:
        if churn is not None:
            churn.stop()
        if hog is not None:
            hog.stop()
        counter.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def report(out: dict[str, Any], target_mb: float) -> None:
    idle = out["rss_idle_mb"]
    print(f"edged churn figures: {out['cpus']} CPUs, load average {out['load1']:.1f} at the "
          f"start; hog {out['hog']}; {out['peers']} raw-TCP peers for {out['churn_s']:.1f} s "
          f"({out['kinds']}, huge frames {out['huge_mb']:g} MB)")
    if out["aborted"]:
        print(f"  ABORTED: {out['aborted']}")
    print(f"  RSS idle (median of 5)     {idle:8.1f} MB   (idle under the hog: "
          f"{out['rss_idle_hog_mb']:.1f} MB)")
    delta = out["rss_max_mb"] - idle
    verdict = "PASS" if delta <= target_mb else "FAIL"
    print(f"  RSS max during the churn   {out['rss_max_mb']:8.1f} MB   ({delta:+.1f} MB vs idle "
          f"at {out['rss_max_at_s']:.0f} s; target +{target_mb:g} MB: {verdict})")
    for text in out["grown_at_peak"]:
        print(f"    grew by the peak: {text}")
    print(f"  RSS after (settled)        {out['rss_after_mb']:8.1f} MB   "
          f"({out['rss_after_mb'] - idle:+.1f} MB vs idle)")
    for text in out["grown_after"]:
        print(f"    still grown after: {text}")
    wins = out["det_per_window"]
    print(f"  det messages per 5 s       {wins}  (min {min(wins)}, "
          f"{'flowing' if min(wins) > 0 else 'STALLED'}; longest gap "
          f"{out['det_max_gap_s']:.2f} s at {out['det_max_gap_at_s']:.0f} s)")
    print(f"  on the way                 {out['seq_lost']} det messages lost (seq gaps), "
          f"{out['frames_skipped']} frames skipped (frame_seq gaps), capture-to-receipt "
          f"up to {out['max_delay_s']:.2f} s")
    print(f"  after the churn            {out['det_in_settle']} det messages in the "
          f"{out['settle_s']:g} s settling")
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(out["thread_cpu_s"].items()))
    print(f"  daemon CPU s in the churn  {cpu}; open fds {out['fds_idle']} idle, max "
          f"{out['fds_max']}")
    conns = out["connections"]
    total = sum(conns.values())
    print(f"  connections made           {total} ({total / out['churn_s']:.0f}/s)")
    for kind in sorted({k.split("/")[0] for k in conns}):
        parts = ", ".join(f"{o} {n}" for k, n in sorted(conns.items())
                          if k.startswith(kind + "/") for o in [k.split("/")[1]])
        print(f"    {kind:<18}{parts}")
    print(f"  SIGTERM -> exit code {out['exit_code']} after {out['stop_s']:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--peers", type=int, default=100)
    ap.add_argument("--hog", type=int, default=os.cpu_count() or 1,
                    help="busy processes (default: one per core; 0: no hog)")
    ap.add_argument("--huge-mb", type=float, default=8.0, help="size of the oversized frames")
    ap.add_argument("--kinds", default=",".join(PEER_KINDS),
                    help=f"peer kinds, in turn (also: {', '.join(EXTRA_KINDS)})")
    ap.add_argument("--threads", type=int, default=2, help="the daemon's inference threads")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--target-mb", type=float, default=20.0)
    ap.add_argument("--abort-mb", type=float, default=2048.0,
                    help="stop the churn if RSS grows beyond idle + this (protects the machine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    unknown = set(args.kinds.split(",")) - set(PEER_KINDS) - set(EXTRA_KINDS)
    if unknown:
        ap.error(f"unknown peer kinds: {', '.join(sorted(unknown))}")
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        report(out, args.target_mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
