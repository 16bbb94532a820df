"""Run the real daemon as a subprocess and listen to it on a real SUB socket."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
import zmq
import zmq.auth

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curve_keys(tmp_path: Path, clients: tuple[str, ...], authorized: tuple[str, ...]
               ) -> tuple[dict[str, tuple[str, str]], Path]:
    """A server key pair and client key pairs (zmq certificate files: public, secret), and the
    authorized_keys_dir holding the public keys of ``authorized``."""
    certs, allowed = tmp_path / "certs", tmp_path / "allowed"
    certs.mkdir()
    allowed.mkdir()
    keys = {n: zmq.auth.create_certificates(str(certs), n) for n in ("server", *clients)}
    for n in authorized:
        shutil.copy(keys[n][0], allowed)
    return keys, allowed


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies (a crashed or killed
    pytest must not leave daemons running beside the next test run)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


class Daemon:
    """``edged run`` in a subprocess; stderr collected to a file for the test to read."""

    def __init__(self, tmp: Path, config: Path | None, env: dict[str, str] | None = None) -> None:
        self.stderr_path = tmp / f"edged-{time.monotonic_ns()}.err"
        args = [sys.executable, "-m", "edged", "run"] + (["--config", str(config)] if config
                                                          else [])
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=self._err, env={**os.environ, **(env or {})},
                                     preexec_fn=die_with_parent)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds from the signal to the process's exit)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        took = time.monotonic() - t0
        self._err.close()
        return code, took

    def wait_stderr(self, text: str, timeout_s: float) -> None:
        """Wait until ``text`` appears in the daemon's log (a log line is the event when the
        daemon has no other way to say it); fails early if the daemon exits."""
        deadline = time.monotonic() + timeout_s
        while text not in self.stderr:
            if self.proc.poll() is not None:
                raise AssertionError(f"edged exited ({self.proc.returncode}) before logging "
                                     f"{text!r}:\n{self.stderr[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {text!r} in "
                                     f"the log:\n{self.stderr[-2000:]}")
            time.sleep(0.05)  # polling a file: there is nothing to block on

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


class Listener:
    """A SUB socket collecting (topic, payload dict, receive time_ns)."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("det/", "status/")) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(endpoint)
        self.messages: list[tuple[str, dict[str, Any], int]] = []
        self.jpegs: dict[str, bytes] = {}  # a snap/ message's event id -> its JPEG frame (last)

    def _recv(self) -> tuple[str, dict[str, Any], int]:
        frames = self.sock.recv_multipart()
        topic, payload = frames[0].decode(), json.loads(frames[1])
        assert len(frames) == (3 if topic.startswith("snap/") else 2), (topic, len(frames))
        if len(frames) == 3:
            self.jpegs[payload["event"]] = frames[2]
        item = (topic, payload, time.time_ns())
        self.messages.append(item)
        return item

    def poll_for(self, seconds: float) -> None:
        """Collect whatever arrives during ``seconds``. Only for checking that something does
        *not* happen; to see that something does, wait for it (``wait_until``/``wait_count``)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                self._recv()

    def wait_until(self, pred: Callable[[tuple[str, dict[str, Any], int]], bool],
                   timeout_s: float, what: str) -> tuple[str, dict[str, Any], int]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                item = self._recv()
                if pred(item):
                    return item
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; "
                             f"got {len(self.messages)} messages")

    def wait_count(self, pred: Callable[[tuple[str, dict[str, Any], int]], bool], n: int,
                   timeout_s: float, what: str, since: int = 0) -> list[dict[str, Any]]:
        """Wait until ``n`` messages from index ``since`` on satisfy ``pred``; returns them."""
        got = [m for m in self.messages[since:] if pred(m)]
        if len(got) < n:
            left = n - len(got)

            def counted(item: tuple[str, dict[str, Any], int]) -> bool:
                nonlocal left
                if pred(item):
                    left -= 1
                return left <= 0

            self.wait_until(counted, timeout_s, f"{n} x {what} (got {n - left})")
        return [item[1] for item in self.messages[since:] if pred(item)][:n]

    def drain(self, quiet_s: float = 0.3, timeout_s: float = 10.0) -> None:
        """Receive until nothing has arrived for ``quiet_s`` (what was already sent)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.sock.poll(int(quiet_s * 1000)):
            self._recv()

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_det(item: tuple[str, dict[str, Any], int]) -> bool:
    return item[0].startswith("det/")


def state_is(state: str) -> Callable[[tuple[str, dict[str, Any], int]], bool]:
    """A predicate: a status message in ``state``."""
    return lambda item: item[0].startswith("status/") and item[1]["state"] == state


def dets(listener: Listener) -> list[dict[str, Any]]:
    return [m for t, m, _ in listener.messages if t.startswith("det/")]


def statuses(listener: Listener) -> list[dict[str, Any]]:
    return [m for t, m, _ in listener.messages if t.startswith("status/")]


class FakeSystemd:
    """Binds the NOTIFY_SOCKET datagram socket and records (monotonic time, fields)."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.05)
        self.datagrams: list[tuple[float, dict[str, str]]] = []

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.datagrams.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None, timeout_s: float,
                 after: float | None = None) -> float:
        """Time of the first matching datagram received after ``after`` (default: now)."""
        since = time.monotonic() if after is None else after
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump(0.05)
            for t, f in self.datagrams:
                if t >= since and key in f and (value is None or f[key] == value):
                    return t
        raise AssertionError(f"no {key}={value} within {timeout_s} s: {self.datagrams[-5:]}")

    def times(self, key: str) -> list[float]:
        return [t for t, f in self.datagrams if key in f]

    def close(self) -> None:
        self.sock.close()
