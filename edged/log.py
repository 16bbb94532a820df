"""Logging setup for the command line (the daemon's journald setup comes with the service)."""

from __future__ import annotations

import logging
import os
import sys


def setup_cli_logging(verbose: bool = False) -> None:
    """One line per record on stderr; quiet the noisy native runtimes unless verbose."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edged: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for noisy in ("tensorflow", "absl", "h5py"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
