"""Signals that arrive while the daemon is still loading.

``edged run`` spends its first fraction of a second importing OpenCV, numpy and a TFLite
runtime and reading the config; a SIGHUP there used to kill it (the default action) and a
SIGTERM ended it by signal instead of exit 0. ``PendingSignals.install()`` is the first thing
``edged run`` does: it records SIGTERM/SIGINT/SIGHUP until the service installs its own
handlers and takes the recorded ones over. Standard library only, so it installs before any
heavy import. (What remains is the interpreter's own start-up, before any of our code runs.)
"""

from __future__ import annotations

import logging
import signal
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
