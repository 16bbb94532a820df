"""Signals that arrive while the daemon is still loading.

``edged run`` spends its first fraction of a second importing OpenCV, numpy and a TFLite
runtime and reading the config; a SIGHUP there used to kill it (the default action) and a
SIGTERM ended it by signal instead of exit 0. ``PendingSignals.install()`` is the first thing
``edged run`` does: it records SIGTERM/SIGINT/SIGHUP until the service installs its own
handlers and takes the recorded ones over. Standard library only, so it installs before any
heavy import. (What remains is the interpreter's own start-up, before any of our code runs.)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PendingSignals:
    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    @classmethod
    def install(cls) -> PendingSignals:
        pending = cls()
        for sig in STOP_SIGNALS:
            signal.signal(sig, pending._on_stop)
        signal.signal(signal.SIGHUP, pending._on_hup)
        logger.debug("early signal handlers installed")
        return pending

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True


_SIGACTION_BYTES = 512  # >= sizeof(struct sigaction) on every Linux ABI (152 on glibc)


@contextlib.contextmanager
def default_action(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Give ``signals`` their default action (end the process) for the duration, from any
    thread, then put back exactly what was there (Python's handler included).

    For the spans where native code holds Python's lock for long (a delegate building its
    graph in this process): Python's handlers only run in the main thread once it gets the
    lock back, so SIGTERM would wait for the build; the default action ends the process at
    once, which systemd counts as a clean stop.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        sigaction = libc.sigaction
    except (OSError, AttributeError):  # not glibc/musl: leave the handlers alone
        yield
        return
    default = ctypes.create_string_buffer(_SIGACTION_BYTES)  # SIG_DFL, no flags, empty mask
    saved: list[tuple[int, ctypes.Array[ctypes.c_char]]] = []
    try:
        for sig in signals:
            old = ctypes.create_string_buffer(_SIGACTION_BYTES)
            if sigaction(sig, default, old) == 0:
                saved.append((sig, old))
        yield
    finally:
        for sig, old in reversed(saved):
            sigaction(sig, old, None)
