"""systemd's notify protocol: READY/STATUS/WATCHDOG/EXTEND_TIMEOUT/RELOADING/STOPPING.

The plain protocol (one datagram to ``$NOTIFY_SOCKET``), sent without blocking: libsystemd's
``sd_notify`` (systemd-python) blocks while the receiver's queue is full, and the daemon must
never stall on its supervisor. A no-op when not started by systemd. The watchdog period is half
of ``$WATCHDOG_USEC`` (when ``$WATCHDOG_PID``, if set, is us); *whether* to ping is the
service's decision, from pipeline progress.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        self._addr = addr or None
        # Our own datagram socket rather than libsystemd's sd_notify (systemd-python): that one
        # blocks while the receiver's queue is full (10 datagrams by default), and a daemon
        # must never stall on its supervisor. A datagram that does not fit is dropped.
        self._sock: socket.socket | None = None
        if self._addr:
            try:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as e:  # a system call filter without sockets: say it, go on
                logger.warning("cannot notify systemd (%s): no READY=1, STATUS or watchdog "
                               "pings", e.strerror or e)
                self._addr = None
        self.watchdog_period_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_period_s = int(usec) / 2e6
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines in one datagram; never raises (systemd may be gone)."""
        if self._addr is None:
            return
        payload = "\n".join(fields)
        with self._lock:
            try:
                if self._sock is not None:
                    self._sock.sendto(payload.encode(), socket.MSG_DONTWAIT, self._addr)
            except OSError as e:
                logger.debug("sd_notify to %s failed: %s", self._addr, e)

    @contextmanager
    def extending_start_timeout(self, step_s: float = 10.0) -> Iterator[None]:
        """While the body runs (an NPU graph compile can take minutes), keep asking systemd
        for ``step_s`` more start time every ``step_s / 2`` seconds."""
        if not self.enabled:
            yield
            return
        done = threading.Event()

        def pump() -> None:
            while True:
                self.notify(f"EXTEND_TIMEOUT_USEC={int(step_s * 1e6)}")
                if done.wait(step_s / 2):
                    return

        t = threading.Thread(target=pump, name="edged-extend-timeout", daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join(1.0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
