"""The lifecycle every pipeline thread shares: start(), idempotent stop(), join(timeout)."""

from __future__ import annotations

import threading


class StageThread:
    """One thread running ``_run`` until ``_stop`` is set. Subclasses wait on ``_stop`` (or a
    blocking call with a timeout), never on a bare sleep."""

    def __init__(self, name: str, daemon: bool = False) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=daemon)

    def _run(self) -> None:  # pragma: no cover - always overridden
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        """True once the thread has ended (or never started)."""
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()
