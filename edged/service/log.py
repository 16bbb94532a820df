"""Logging: journald with structured fields under systemd, plain lines in a terminal.

- Under systemd (``$JOURNAL_STREAM`` names our stderr) with systemd-python installed and the
  journal socket present: ``systemd.journal.JournalHandler`` with the fields CAMERA, BACKEND and
  MODEL on every record (``journalctl -u edged CAMERA=balcony``).
- Under systemd without systemd-python: stderr lines prefixed ``<N>`` (syslog priority), which
  journald turns into the record's priority.
- In a terminal: ``edged: LEVEL: message``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


CAPTURE_THREAD = "edged-capture/"  # + the camera's name (edged.pipeline.capture)


class LogContext(logging.Filter):
    """Adds the daemon's cameras/backend/model to every record (journal fields); a record of a
    camera's capture thread gets that camera alone."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def set(self, **fields: str) -> None:
        self.fields.update({k.upper(): v for k, v in fields.items()})

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in self.fields.items():
            setattr(record, k, v)
        thread = record.threadName or ""
        if thread.startswith(CAPTURE_THREAD):  # a camera's own thread: that camera
            record.CAMERA = thread[len(CAPTURE_THREAD):]
        return True


CONTEXT = LogContext()


class SyslogPrefixFormatter(logging.Formatter):
    """``<N>message``: journald reads N as the syslog priority of the line."""

    def format(self, record: logging.LogRecord) -> str:
        pri = _PRIORITY.get(record.levelno, 6)
        return f"<{pri}>{super().format(record)}"


def under_journal(environ: dict[str, str] | None = None) -> bool:
    """True when stderr is the journal stream systemd connected us to."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def journal_handler(sender: Callable[..., Any] | None = None) -> logging.Handler | None:
    """systemd-python's JournalHandler carrying CONTEXT's fields, or None if unavailable."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": "edged"}
    if sender is not None:
        kwargs["sender_function"] = sender
    handler: logging.Handler = JournalHandler(**kwargs)
    handler.addFilter(CONTEXT)
    return handler


def setup_cli_logging(verbose: bool = False) -> str:
    """Configure the root logger; returns which target was chosen (for the tests)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler: logging.Handler | None = None
    target = "terminal"
    if under_journal():
        if JOURNAL_SOCKET.exists():
            handler = journal_handler()
            target = "journal"
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(SyslogPrefixFormatter("%(message)s"))
            target = "stderr-priority"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("edged: %(levelname)s: %(message)s"))
    root.handlers[:] = [handler]
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for noisy in ("tensorflow", "absl", "h5py"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    return target
