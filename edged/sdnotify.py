"""systemd's notify protocol: one datagram per state change to ``$NOTIFY_SOCKET``.

A no-op when not started by systemd (no ``NOTIFY_SOCKET``). Uses the plain protocol, which is
all systemd-python's ``daemon.notify`` does too.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        self._addr = addr or None
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines in one datagram; never raises (systemd may be gone)."""
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except OSError as e:
            logger.debug("sd_notify to %s failed: %s", self._addr, e)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
