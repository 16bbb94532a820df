"""Keep native libraries' stderr/stdout chatter (TensorFlow, LiteRT) out of our output."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_native_output() -> Iterator[Callable[[], str]]:
    """Send native libraries' chatter on fds 1/2 to a temp file, unless debug logging is on.

    Used around one-off calls (import, conversion, interpreter creation), never per frame. The
    returned callable gives the captured text, for the debug log when the call failed.
    """
    if logger.isEnabledFor(logging.DEBUG):
        yield lambda: ""
        return
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)

        def read() -> str:
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield read
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
