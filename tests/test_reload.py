"""SIGHUP under faults (issue 10, #2, #12, #13 and the reload path): a reload never blocks the
daemon, never drops subscribers it does not have to, never applies a half-written file, applies
CURVE key changes, retries what it could not apply, and can be interrupted by SIGTERM at any
point. Real daemons, real ZeroMQ peers (CURVE included), a real hanging delegate (.so)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import yaml
import zmq
import zmq.auth

from edged.media import SAMPLE_CLIP
from edged.models import DEFAULT_MODEL
from tests.daemon_util import Daemon, FakeSystemd, Listener, curve_keys, free_port, is_det
from tests.timing import Speed

STOP_BOUND_S = 2.0  # SIGTERM -> exit 0 within 2 s, whatever the daemon is doing


def _write(path: Path, cfg: dict[str, Any]) -> Path:
    """Atomic replace, as the README tells operators to do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.replace(tmp, path)
    return path


def _base(port: int, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "camera": {"name": "cam", "source": str(SAMPLE_CLIP), "realtime": False},
        "publish": {"endpoints": [f"tcp://127.0.0.1:{port}"]},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def _reload_done(item: tuple[str, dict[str, Any], int]) -> bool:
    """A status after the newest reload ended (any outcome)."""
    topic, msg, _ = item
    r = msg.get("reload") if topic.startswith("status/") else None
    return r is not None and r["state"] != "in_progress"


def _hup_and_wait(d: Daemon, sub: Listener, speed: Speed) -> dict[str, Any]:
    """SIGHUP, then the first status saying that this reload ended; returns its reload."""
    sent = time.time_ns()
    d.signal(signal.SIGHUP)

    def done(item: tuple[str, dict[str, Any], int]) -> bool:
        return _reload_done(item) and item[1]["reload"]["started_ts_ns"] >= sent

    _, st, _ = sub.wait_until(done, speed.deadline(base_s=8.0), "the reload's outcome")
    reload: dict[str, Any] = st["reload"]
    return reload


def _seqs(sub: Listener) -> list[int]:
    return [m["seq"] for t, m, _ in sub.messages if t.startswith("det/")]


def _contiguous(seqs: list[int]) -> list[tuple[int, int]]:
    """The gaps in a det seq stream (the daemon publishes every frame: empty_frames on)."""
    return [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]


def test_status_interval_change_keeps_every_subscriber(tmp_path: Path, speed: Speed) -> None:
    """#13: changing publish.status_interval_s restarted the PUB socket: every subscriber
    reconnected and lost messages. Now nothing is rebound and no det seq is missing."""
    port = free_port()
    cfg = _write(tmp_path / "c.yaml", _base(port))
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_count(is_det, 5, speed.start_deadline(n_frames=5), "det messages")
        _write(cfg, _base(port, publish={"status_interval_s": 0.25}))
        reload = _hup_and_wait(d, sub, speed)
        assert reload["state"] == "applied", reload
        mark = len(sub.messages)
        sub.wait_count(is_det, 10, speed.deadline(n_frames=10), "det messages after", mark)
        code, _ = d.stop()
    assert code == 0, d.stderr
    assert not _contiguous(_seqs(sub)), _contiguous(_seqs(sub))
    assert d.stderr.count("publishing on") == 1, d.stderr  # bound once, never again


def test_watchdog_timeout_change_reloads_no_model(tmp_path: Path, speed: Speed) -> None:
    """inference.watchdog_timeout_s is read live: changing only it must not rebuild the engine
    (on an NPU a graph build can take minutes). It did, for a while, during issue 11."""
    port = free_port()
    cfg = _write(tmp_path / "c.yaml", _base(port))
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_count(is_det, 3, speed.start_deadline(n_frames=3), "det messages")
        _write(cfg, _base(port, inference={"watchdog_timeout_s": 20.0}))
        reload = _hup_and_wait(d, sub, speed)
        code, _ = d.stop()
    assert code == 0, d.stderr
    assert reload["state"] == "applied", reload
    assert "reload: applied" in d.stderr and "reload: model" not in d.stderr, d.stderr


def test_half_written_config_is_not_applied(tmp_path: Path, speed: Speed) -> None:
    """#13: a SIGHUP arriving while an editor is still writing the file (truncate, write part,
    write the rest) applied the truncated-but-valid YAML: the endpoint fell back to the default
    and the capture restarted. Now the reload waits for the file to settle."""
    port = free_port()
    full = _base(port, detection={"conf_threshold": 0.3})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_base(port), sort_keys=False))
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_count(is_det, 5, speed.start_deadline(n_frames=5), "det messages")
        text = yaml.safe_dump({"detection": full["detection"], "camera": full["camera"]},
                              sort_keys=False)
        rest = yaml.safe_dump({"publish": full["publish"]}, sort_keys=False)
        sent = time.time_ns()
        with cfg.open("w") as f:  # in place, like an editor without atomic save
            f.write(text)  # valid YAML on its own: no publish section (default endpoint)
            f.flush()
            d.signal(signal.SIGHUP)
            time.sleep(0.2)  # the editor is still busy
            f.write(rest)
        _, st, _ = sub.wait_until(
            lambda m: _reload_done(m) and m[1]["reload"]["started_ts_ns"] >= sent,
            speed.deadline(base_s=8.0), "the reload's outcome")
        mark = len(sub.messages)
        sub.wait_count(is_det, 10, speed.deadline(n_frames=10), "det messages after", mark)
        code, _ = d.stop()
    assert code == 0, d.stderr
    assert st["reload"]["state"] == "applied", st["reload"]
    assert "5556" not in d.stderr and "capture restarted" not in d.stderr, d.stderr
    assert "waiting for the writer" in d.stderr
    assert not _contiguous(_seqs(sub))


def test_rejected_endpoint_is_reported_and_retried(tmp_path: Path, speed: Speed) -> None:
    """#12: a new endpoint on a busy port: the old endpoints kept serving, yet the daemon said
    "applied" and the next SIGHUP "configuration unchanged" (never retried). Now the reload is
    reported as partial, status lists what is bound, and the next SIGHUP binds it."""
    port, busy = free_port(), free_port()
    cfg = _write(tmp_path / "c.yaml", _base(port))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", busy))
    blocker.listen()
    try:
        with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
            sub.wait_count(is_det, 5, speed.start_deadline(n_frames=5), "det messages")
            eps = [f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{busy}"]
            _write(cfg, _base(port, publish={"endpoints": eps}))
            reload = _hup_and_wait(d, sub, speed)
            assert reload["state"] == "partial", reload
            assert f"127.0.0.1:{busy}" in reload["message"], reload
            st = sub.wait_until(lambda m: m[0].startswith("status/"), speed.deadline(base_s=3),
                                "a status")[1]
            assert st["endpoints"] == eps[:1] and st["state"] == "running", st
            blocker.close()
            reload = _hup_and_wait(d, sub, speed)  # the same file: must be retried
            assert reload["state"] == "applied", reload
            with Listener(eps[1], topics=("det/",)) as sub2:
                sub2.wait_count(is_det, 3, speed.deadline(n_frames=3), "det on the new port")
            st = sub.wait_until(lambda m: m[0].startswith("status/"), speed.deadline(base_s=3),
                                "a status")[1]
            assert st["endpoints"] == eps, st
            code, _ = d.stop()
    finally:
        blocker.close()
    assert code == 0, d.stderr
    assert not _contiguous(_seqs(sub))  # the first endpoint was never rebound


class _CurveSub:
    def __init__(self, endpoint: str, server_public: bytes, cert: Path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        public, secret = zmq.auth.load_certificate(str(cert))
        assert secret is not None
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.curve_serverkey = server_public
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"det/")
        self.sock.connect(endpoint)
        self.seqs: list[int] = []

    def read(self) -> int:
        """Take what has arrived; returns how many."""
        n = 0
        while self.sock.poll(0):
            self.seqs.append(json.loads(self.sock.recv_multipart()[1])["seq"])
            n += 1
        return n

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _read_until(subs: list[_CurveSub], done: Any, timeout_s: float, what: str,
                d: Daemon) -> None:
    """Keep every subscriber's queue drained until ``done()``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, \
            f"timed out after {timeout_s} s waiting for {what}:\n{d.stderr[-3000:]}"
        for s in subs:
            s.read()
        time.sleep(0.01)


def test_curve_key_revocation_and_addition_apply_on_reload(tmp_path: Path,
                                                           speed: Speed) -> None:
    """#2: a removed client key kept receiving (even on new connections) and a new key was
    refused until a restart; SIGHUP said "configuration unchanged". Now a revoked client is
    cut off at the reload, the others reconnect, and a new key is let in."""
    keys, allowed = curve_keys(tmp_path, ("alice", "bob", "carol"), ("alice", "bob"))
    server_public, _ = zmq.auth.load_certificate(keys["server"][0])
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    conf = _base(port, publish={"curve": {"server_secret_key": keys["server"][1],
                                          "authorized_keys_dir": str(allowed)}})
    cfg = _write(tmp_path / "c.yaml", conf)
    subs = {n: _CurveSub(ep, server_public, Path(keys[n][1])) for n in ("alice", "bob", "carol")}
    alice, bob, carol = subs["alice"], subs["bob"], subs["carol"]
    everyone = list(subs.values())
    try:
        with Daemon(tmp_path, cfg) as d:
            _read_until(everyone, lambda: len(alice.seqs) >= 3 and len(bob.seqs) >= 3,
                        speed.start_deadline(n_frames=3), "alice and bob receiving", d)
            assert not carol.seqs  # not authorized
            carol.close()
            # revoke alice: remove her key, reload
            (allowed / Path(keys["alice"][0]).name).unlink()
            d.signal(signal.SIGHUP)
            _read_until(everyone[:2], lambda: "1 revoked" in d.stderr,
                        speed.deadline(base_s=8.0), "the revocation in the log", d)
            time.sleep(0.2)
            alice.read()  # whatever was delivered before her connection was closed
            n_alice, n_bob = len(alice.seqs), len(bob.seqs)
            _read_until(everyone[:2], lambda: len(bob.seqs) >= n_bob + 10,
                        speed.deadline(n_frames=10, base_s=2.0), "bob receiving again", d)
            assert len(alice.seqs) == n_alice, "the revoked key still receives"
            # admit carol: a new connection with her key is let in after the reload
            shutil.copy(keys["carol"][0], allowed)
            d.signal(signal.SIGHUP)
            _read_until(everyone[:2], lambda: "CURVE: 2 client keys authorized\n" in d.stderr,
                        speed.deadline(base_s=8.0), "carol's key in the log", d)
            carol = subs["carol"] = _CurveSub(ep, server_public, Path(keys["carol"][1]))
            _read_until([alice, bob, carol], lambda: len(carol.seqs) >= 3,
                        speed.deadline(n_frames=3, base_s=2.0), "carol receiving", d)
            assert len(alice.seqs) == n_alice
            code, _ = d.stop()
    finally:
        for s in subs.values():
            s.close()
    assert code == 0, d.stderr
    assert "reload: configuration unchanged" not in d.stderr


def test_reload_with_a_hanging_delegate_keeps_serving(tmp_path: Path, speed: Speed,
                                                      recording_delegate: Path) -> None:
    """The reload path: a new delegate that hangs in its probe (a wedged NPU compiling its
    graph) blocked the main thread: no WATCHDOG=1 (systemd kills the daemon), SIGTERM waited
    for the probe. Now the old engine keeps publishing, the watchdog is fed at its period,
    status reports the reload and its deadline, and SIGTERM exits 0 within 2 s, probe killed."""
    sd = FakeSystemd(tmp_path)
    port = free_port()
    models = tmp_path / "models"  # a private copy: the probe's command line names it
    shutil.copytree(DEFAULT_MODEL.parent, models,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    cfg = _write(tmp_path / "c.yaml", {**_base(port), "model": str(models / DEFAULT_MODEL.name)})
    watchdog_usec = 4_000_000  # systemd kills when two pings are further apart than this
    env = {"NOTIFY_SOCKET": str(sd.path), "WATCHDOG_USEC": str(watchdog_usec)}
    try:
        with Daemon(tmp_path, cfg, env) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
            sub.wait_count(is_det, 3, speed.start_deadline(n_frames=3), "det messages")
            _write(cfg, {**_base(port), "model": str(models / DEFAULT_MODEL.name),
                         "inference": {"delegate": str(recording_delegate),
                                       "delegate_options": {"fail": "hang"},
                                       "probe_timeout_s": 300}})
            mark = time.monotonic()
            d.signal(signal.SIGHUP)
            _, st, _ = sub.wait_until(
                lambda m: m[0].startswith("status/") and m[1]["reload"] is not None
                and m[1]["reload"]["phase"] == "loading_model", speed.deadline(base_s=8.0),
                "a status: reload loading the model")
            assert st["reload"]["state"] == "in_progress" and st["state"] == "reloading"
            assert st["reload"]["deadline_s"] >= 300, st["reload"]
            # the probe hangs for 300 s: watch several watchdog periods meanwhile
            n = len(sub.messages)
            sub.wait_count(lambda m: is_det(m) and m[1]["backend"] == "cpu", 10,
                           speed.deadline(n_frames=10), "det messages from the old engine", n)
            watch_until = mark + 3 * watchdog_usec / 1e6
            while time.monotonic() < watch_until:
                sd.pump(0.2)
            assert d.proc.poll() is None
            assert _probe_pids(models), "the probe is not running: nothing hung"
            code, took = d.stop()
        sd.pump(0.3)
    finally:
        sd.close()
    pings = [t for t in sd.times("WATCHDOG") if t >= mark]
    gaps = [b - a for a, b in itertools.pairwise([mark, *pings])]
    assert len(pings) >= 3 and max(gaps) < watchdog_usec / 1e6, (len(pings), gaps)
    assert code == 0 and took < STOP_BOUND_S, (code, took, d.stderr[-2000:])
    deadline = time.monotonic() + 2
    while _probe_pids(models) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _probe_pids(models), "the probe child outlived the daemon"


def _probe_pids(models: Path) -> list[int]:
    """Processes running edged's delegate probe on the model copy in ``models``."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"edged.engine.probe" in cmd and any(str(models).encode() in c for c in cmd):
            out.append(int(p.name))
    return out


def test_model_replaced_in_place_is_loaded_on_reload(tmp_path: Path, speed: Speed) -> None:
    """`cp new.tflite model.tflite; systemctl reload edged` (the usual update) said
    "configuration unchanged" and kept the old model; a broken file is refused and the
    running model stays; log_level is applied again."""
    port = free_port()
    models = tmp_path / "models"
    shutil.copytree(DEFAULT_MODEL.parent, models,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    base = {**_base(port), "model": str(models / DEFAULT_MODEL.name)}
    cfg = _write(tmp_path / "c.yaml", base)
    tflite = next(models.glob("*_int8.tflite"))
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_count(is_det, 3, speed.start_deadline(n_frames=3), "det messages")
        shutil.copyfile(DEFAULT_MODEL.parent / tflite.name, tflite)  # same bytes, new file
        reload = _hup_and_wait(d, sub, speed)
        assert reload["state"] == "applied", reload
        assert "reload: model" in d.stderr
        tflite.write_bytes(b"\0" * 1000)  # a broken update
        reload = _hup_and_wait(d, sub, speed)
        assert reload["state"] == "partial" and "model/inference kept" in reload["message"]
        mark = len(sub.messages)
        sub.wait_count(is_det, 5, speed.deadline(n_frames=5), "det messages after", mark)
        _write(cfg, {**base, "log_level": "warning"})
        assert _hup_and_wait(d, sub, speed)["state"] in ("applied", "partial")
        before = d.stderr
        assert _hup_and_wait(d, sub, speed)["state"] == "partial"  # the same broken model
        code, _ = d.stop()
    assert code == 0, d.stderr
    new_lines = d.stderr[len(before):]
    assert "rejected" in new_lines and "INFO" not in new_lines, new_lines


def test_reload_onto_a_slow_delegate_stretches_the_watchdog(tmp_path: Path, speed: Speed,
                                                            recording_delegate: Path) -> None:
    """A delegate that works but takes seconds to build its graph (an NPU compiling): after
    its probe passes, the build runs in the daemon while the runtime holds Python's lock, so
    no watchdog ping can be sent: that froze the pings past WatchdogSec (systemd kills), and a
    SIGTERM waited for the whole build. Now the watchdog is stretched (WATCHDOG_USEC=) around
    the build and put back after; SIGTERM during a build ends the process at once (its default
    action: systemd counts it as a clean stop)."""
    sd = FakeSystemd(tmp_path)
    port = free_port()
    build_ms = 3000
    watchdog_usec = 2_000_000
    env = {"NOTIFY_SOCKET": str(sd.path), "WATCHDOG_USEC": str(watchdog_usec)}
    base = _base(port)
    cfg = _write(tmp_path / "c.yaml", base)

    def slow(ms: int) -> dict[str, Any]:
        return {**base, "inference": {"delegate": str(recording_delegate),
                                      "delegate_options": {"sleep_ms": ms}}}

    pumping = threading.Event()
    pump = threading.Thread(target=lambda: [sd.pump(0.1) for _ in iter(pumping.is_set, True)],
                            daemon=True)
    try:
        with Daemon(tmp_path, cfg, env) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
            pump.start()  # like systemd: every datagram read at once
            sub.wait_count(is_det, 3, speed.start_deadline(n_frames=3), "det messages")
            mark = time.monotonic()
            _write(cfg, slow(build_ms))
            reload = _hup_and_wait(d, sub, speed)
            assert reload["state"] == "applied", reload
            assert "building the delegate's graph in this process" in d.stderr
            sub.wait_until(lambda m: is_det(m) and m[1]["backend"] == "external",
                           speed.deadline(n_frames=3), "det messages from the new engine")
            time.sleep(0.5)
            # then a second one, interrupted by SIGTERM while it builds
            _write(cfg, slow(8_000))
            n = d.stderr.count("building the delegate's graph")
            d.signal(signal.SIGHUP)
            deadline = time.monotonic() + speed.deadline(base_s=8.0) + 8  # the probe: 8 s
            while d.stderr.count("building the delegate's graph") == n:
                assert time.monotonic() < deadline and d.proc.poll() is None, d.stderr[-2000:]
                time.sleep(0.1)
            time.sleep(0.5)  # inside the build now
            code, took = d.stop()
        time.sleep(0.3)
    finally:
        pumping.set()
        pump.join(2)
        sd.close()
    assert code == -signal.SIGTERM and took < STOP_BOUND_S, (code, took, d.stderr[-2000:])
    # Every gap between two pings is covered by the WATCHDOG_USEC in force at its start.
    events = [(t, f) for t, f in sd.datagrams if t >= mark]
    limit, last_ping, gaps = watchdog_usec / 1e6, mark, []
    stretched = False
    for t, f in events:
        if "WATCHDOG" in f:
            gaps.append((t - last_ping, limit))
            last_ping = t
        if "WATCHDOG_USEC" in f:
            limit = int(f["WATCHDOG_USEC"]) / 1e6
            stretched |= limit > watchdog_usec / 1e6
    assert stretched, events[:20]
    assert all(gap < lim for gap, lim in gaps), [g for g in gaps if g[0] >= g[1]]
    assert any(gap > watchdog_usec / 1e6 for gap, _ in gaps), "the build never paused pings"


class _PortThief:
    """A local process's worth of trying to take a port: bind() in a loop until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stole = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", self.port))
                s.listen()
                self.stole = True
                self._stop.wait()
            except OSError:
                pass
            finally:
                s.close()

    def stop(self) -> bool:
        self._stop.set()
        self._t.join(2)
        return self.stole


def test_curve_changes_never_release_the_port(tmp_path: Path, speed: Speed) -> None:
    """Applying CURVE changes by unbinding and binding again handed the port, for a moment,
    to any local process spinning on bind() (10 runs in 11): subscribers then reconnected to
    it, and edged said the publish settings stayed. Now a revocation ends the connections on
    the bound socket, and turning CURVE on (or a new server key) is refused until a restart."""
    keys, allowed = curve_keys(tmp_path, ("a", "b"), ("a", "b"))
    port = free_port()
    plain = _base(port)
    curved = _base(port, publish={"curve": {"server_secret_key": keys["server"][1],
                                            "authorized_keys_dir": str(allowed)}})
    cfg = _write(tmp_path / "c.yaml", plain)
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_count(is_det, 3, speed.start_deadline(n_frames=3), "det messages")
        thief = _PortThief(port)
        _write(cfg, curved)
        reload = _hup_and_wait(d, sub, speed)
        assert reload["state"] == "partial" and "takes a restart" in reload["message"], reload
        mark = len(sub.messages)
        sub.wait_count(is_det, 5, speed.deadline(n_frames=5), "det messages after", mark)
        assert not thief.stop(), "a local process took edged's port during the reload"
        code, _ = d.stop()
    assert code == 0, d.stderr[-2000:]
    # and a revocation, with a thief spinning the whole time
    cfg = _write(tmp_path / "c2.yaml", curved)
    with Daemon(tmp_path, cfg) as d:
        d.wait_stderr("-> running", speed.start_deadline())
        thief = _PortThief(port)
        (allowed / Path(keys["a"][0]).name).unlink()
        d.signal(signal.SIGHUP)
        d.wait_stderr("1 revoked", speed.deadline(base_s=8.0))
        time.sleep(0.5)
        assert not thief.stop(), "a local process took edged's port during the revocation"
        code, _ = d.stop()
    assert code == 0, d.stderr[-2000:]


def test_unreadable_key_files_are_refused_and_later_reloads_work(tmp_path: Path,
                                                                 speed: Speed) -> None:
    """A FIFO dropped into authorized_keys_dir wedged the reload at "reading" for ever (pyzmq
    opens every *.key file there): every later SIGHUP was ignored, so a revocation never took
    effect. Now it is refused in one line (partial) and the next reload works."""
    keys, allowed = curve_keys(tmp_path, ("a", "b"), ("a", "b"))
    port = free_port()
    conf = _base(port, publish={"curve": {"server_secret_key": keys["server"][1],
                                          "authorized_keys_dir": str(allowed)}})
    cfg = _write(tmp_path / "c.yaml", conf)
    with Daemon(tmp_path, cfg) as d:
        d.wait_stderr("-> running", speed.start_deadline())
        os.mkfifo(allowed / "evil.key")
        d.signal(signal.SIGHUP)
        d.wait_stderr("evil.key is not a key file", speed.deadline(base_s=8.0))
        (allowed / "evil.key").unlink()
        (allowed / Path(keys["a"][0]).name).unlink()
        d.signal(signal.SIGHUP)
        d.wait_stderr("1 revoked", speed.deadline(base_s=8.0))
        code, _ = d.stop()
    assert code == 0, d.stderr[-2000:]


def test_a_working_accelerator_is_not_traded_for_a_fallback(tmp_path: Path, speed: Speed,
                                                           recording_delegate: Path) -> None:
    """A reload onto a delegate that fails its probe replaced the working accelerator with
    the CPU fallback and said "applied". Now the running engine stays and the reload is
    "partial" with the reason. And SIGTERM during a reload leaves the last status saying so
    ("abandoned"), not "in_progress"."""
    port = free_port()
    works = {**_base(port), "inference": {"delegate": str(recording_delegate)}}
    cfg = _write(tmp_path / "c.yaml", works)
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(lambda m: is_det(m) and m[1]["backend"] == "external",
                       speed.start_deadline(), "det messages from the external delegate")
        _write(cfg, {**works, "inference": {"delegate": str(recording_delegate),
                                            "delegate_options": {"fail": "prepare"}}})
        reload = _hup_and_wait(d, sub, speed)
        assert reload["state"] == "partial", reload
        assert "the new backend is unavailable" in reload["message"], reload
        mark = len(sub.messages)
        got = sub.wait_count(is_det, 5, speed.deadline(n_frames=5), "det messages", mark)
        assert {m["backend"] for m in got} == {"external"}
        # SIGTERM while a reload hangs in its probe
        _write(cfg, {**works, "inference": {"delegate": str(recording_delegate),
                                            "delegate_options": {"fail": "hang"}}})
        d.signal(signal.SIGHUP)
        sub.wait_until(lambda m: m[0].startswith("status/") and m[1]["reload"] is not None
                       and m[1]["reload"]["phase"] == "loading_model",
                       speed.deadline(base_s=8.0), "the reload loading the model")
        code, took = d.stop()
        sub.drain()
    assert code == 0 and took < STOP_BOUND_S, (code, took)
    last = [m for t, m, _ in sub.messages if t.startswith("status/")][-1]
    assert last["state"] == "stopping" and last["reload"]["state"] == "abandoned", last
