"""Run the real daemon as a subprocess and listen to it on a real SUB socket."""

from __future__ import annotations

import json
import os
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

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


class Daemon:
    """``edged run`` in a subprocess; stderr collected to a file for the test to read."""

    def __init__(self, tmp: Path, config: Path | None, env: dict[str, str] | None = None) -> None:
        self.stderr_path = tmp / f"edged-{time.monotonic_ns()}.err"
        args = [sys.executable, "-m", "edged", "run"] + (["--config", str(config)] if config
                                                          else [])
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=self._err, env={**os.environ, **(env or {})})

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._err.close()
        return code, time.monotonic() - t0

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

    def poll_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                topic, payload = self.sock.recv_multipart()
                self.messages.append((topic.decode(), json.loads(payload), time.time_ns()))

    def wait_until(self, pred: Callable[[tuple[str, dict[str, Any], int]], bool],
                   timeout_s: float, what: str) -> tuple[str, dict[str, Any], int]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                topic, payload = self.sock.recv_multipart()
                item = (topic.decode(), json.loads(payload), time.time_ns())
                self.messages.append(item)
                if pred(item):
                    return item
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; "
                             f"got {len(self.messages)} messages")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dets(listener: Listener) -> list[dict[str, Any]]:
    return [m for t, m, _ in listener.messages if t.startswith("det/")]


def statuses(listener: Listener) -> list[dict[str, Any]]:
    return [m for t, m, _ in listener.messages if t.startswith("status/")]
