"""Native libraries' output (OpenCV, FFmpeg, TensorFlow Lite, vendor delegates) on fds 1/2.

Two tools:

- ``NativeOutputForwarder`` (``edged run`` only): fds 1 and 2 become a pipe read by a small
  process of its own (``edged._nativelog``) that writes every line to our original stderr with
  a priority -- WARNING by default, INFO for lines that are clearly informational --
  rate-limited, so under systemd a native line gets a priority and a runaway library cannot
  flood the journal. A process, not a thread: a library writing while it holds Python's lock
  cannot block on a pipe only Python drains, and a daemon that aborts still has its last words
  (a libzmq assertion) logged. Our own handlers keep writing to the original stderr (a dup
  taken before the redirect), so our lines never go through the pipe. The logger process sends
  a copy of each line back, for ``native_lines()`` (why a camera failed to open).
- ``quiet_native_output()``: around one-off calls (import, conversion, interpreter creation).
  While the forwarder runs it leaves fds 1/2 alone (the whole process shares them: redirecting
  them would swallow every other thread's output); without it, the chatter goes to a temp file
  (the CLI commands that are not the daemon).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import fcntl
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TextIO

from edged._nativelog import SYNC

logger = logging.getLogger(__name__)

MAX_CAPTURED_BYTES = 64 * 1024  # what a section keeps for its caller
DRAIN_S = 1.0  # at most this long at exit for the logger process to write what is left
PIPE_BYTES = 1 << 20  # the pipe's buffer: room for a burst (root may set it; else 64 KiB)
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, Linux; named in fcntl only from Python 3.10 on Linux

_active: NativeOutputForwarder | None = None


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (default: 8 per core) before the daemon's threads start. Each
    camera's capture thread allocates a frame (2.7 MB at 720p) that the inference thread frees;
    with an arena per thread, each kept its own freed frames: 4 cameras took +70 MB over one
    (+58 MB with 2 arenas; benchmarks/multicam.py). What ``MALLOC_ARENA_MAX`` in the
    environment does, which wins when set. False where there is no glibc mallopt (musl)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):
        return False


def _libc_flush() -> None:
    """Flush C stdio buffers (a library's printf to stdout sits there when fd 1 is a pipe)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


class _Captured:
    """The native lines that arrive during a section, kept for its caller (bounded)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.size = 0

    def add(self, text: str) -> None:
        if self.size < MAX_CAPTURED_BYTES:
            self.lines.append(text)
            self.size += len(text) + 1


class NativeOutputForwarder:
    """fds 1/2 -> pipe -> the ``edged._nativelog`` process -> our original stderr, each line
    with a priority; a copy of each line comes back on a second pipe for ``native_lines()``.
    ``start()`` once, ``close()`` at exit (restores the fds; the process writes what is still in
    the pipe and ends)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sections: list[_Captured] = []  # one per open section
        self._syncs: dict[bytes, threading.Event] = {}
        self._tokens = itertools.count()
        self._saved: tuple[int, int] | None = None
        self._back_fd = -1
        self._write_fd = -1  # our own write end, for sync tokens (never a restored fd 2)
        self._write_lock = threading.Lock()
        self._stream: TextIO | None = None
        self._old_stderr: TextIO | None = None
        self._swapped: list[logging.StreamHandler[TextIO]] = []
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, journal: bool, level: str) -> None:
        """``journal``: write ``<N>`` priority prefixes (journald), else terminal lines."""
        global _active
        sys.stdout.flush()
        sys.stderr.flush()
        _libc_flush()
        # Our own output: a dup of the original stderr, for sys.stderr and the log handlers.
        original = os.dup(2)
        enc = getattr(sys.stderr, "encoding", None) or "utf-8"
        self._stream = open(os.dup(2), "w", buffering=1, encoding=enc,  # noqa: SIM115
                            errors="backslashreplace")
        read_fd, write_fd = os.pipe()
        back_read, back_write = os.pipe()
        with contextlib.suppress(OSError):  # room for a burst while the logger catches up
            fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BYTES)
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "edged._nativelog", "journal" if journal else "terminal",
                 level, str(back_write)],
                stdin=read_fd, stdout=original, stderr=original, pass_fds=(back_write,),
                close_fds=True)
        except OSError as e:
            for fd in (original, read_fd, write_fd, back_read, back_write):
                os.close(fd)
            self._stream.close()
            self._stream = None
            logger.warning("native output stays as it is: cannot start its logger (%s)", e)
            return
        for fd in (original, read_fd, back_write):
            os.close(fd)
        self._old_stderr = sys.stderr
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr:
                h.setStream(self._stream)
                self._swapped.append(h)
        sys.stderr = self._stream
        if faulthandler.is_enabled():  # a fatal error's traceback goes straight out
            faulthandler.enable(self._stream)
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        self._write_fd = write_fd
        self._back_fd = back_read
        self._thread = threading.Thread(target=self._reader, name="edged-native-output",
                                        daemon=True)
        self._thread.start()
        _active = self

    def close(self) -> None:
        """Restore fds 1/2 and sys.stderr; the logger process writes what native code wrote
        until now and ends (waited for at most DRAIN_S)."""
        global _active
        if self._saved is None:
            return
        sys.stdout.flush()
        _libc_flush()
        _active = None
        with self._write_lock:
            os.dup2(self._saved[0], 1)  # the pipe's last write ends close: the logger sees EOF
            os.dup2(self._saved[1], 2)
            for fd in (*self._saved, self._write_fd):
                os.close(fd)
            self._saved = None
            self._write_fd = -1
        if self._child is not None:
            # a child process of ours that inherited fd 2 keeps the pipe open: stop waiting
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(DRAIN_S)
        restore = sys.__stderr__ or self._old_stderr
        if faulthandler.is_enabled() and restore is not None:
            faulthandler.enable(restore)
        if self._old_stderr is not None:
            for h in self._swapped:
                h.setStream(self._old_stderr)
            sys.stderr = self._old_stderr
        self._swapped.clear()
        if self._thread is not None:
            self._thread.join(0.2)
        if self._stream is not None:
            self._stream.close()

    def __enter__(self) -> NativeOutputForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sections -------------------------------------------------------------------------
    @contextlib.contextmanager
    def section(self) -> Iterator[Callable[[], list[str]]]:
        """Collect the native lines that arrive meanwhile (from any thread). The callable
        first waits for what this thread wrote so far."""
        captured = _Captured()
        with self._lock:
            self._sections.append(captured)

        def read() -> list[str]:
            self.sync()
            with self._lock:
                return list(captured.lines)

        try:
            yield read
        finally:
            with self._lock:
                self._sections.remove(captured)

    def sync(self, timeout_s: float = 0.5) -> bool:
        """Wait until the reader has handled what this thread wrote to fd 2 so far (a token
        written after it into the same pipe comes out after it)."""
        _libc_flush()
        token = SYNC + str(next(self._tokens)).encode()
        event = threading.Event()
        with self._lock:
            self._syncs[token] = event
        try:
            with self._write_lock:
                if self._write_fd < 0:
                    return False
                os.write(self._write_fd, token + b"\n")
            return event.wait(timeout_s)
        except OSError:
            return False
        finally:
            with self._lock:
                self._syncs.pop(token, None)

    # --- the copies coming back ------------------------------------------------------------
    def _reader(self) -> None:
        """Read the logger process's copies: sync tokens wake their waiters, lines go to the
        open sections. Never logs (the logger process did); never blocks a writer (the
        logger process drops copies we do not take in time)."""
        buf = b""
        while True:
            try:
                chunk = os.read(self._back_fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                self._copy(raw)
        os.close(self._back_fd)

    def _copy(self, raw: bytes) -> None:
        if raw.startswith(SYNC):
            with self._lock:
                event = self._syncs.get(raw)
            if event is not None:
                event.set()
            return
        text = raw.decode("utf-8", "backslashreplace")
        with self._lock:
            for captured in self._sections:
                captured.add(text)


@contextlib.contextmanager
def quiet_native_output() -> Iterator[Callable[[], str]]:
    """Keep native libraries' chatter on fds 1/2 out of our output during a one-off call.

    Used around one-off calls (import, conversion, interpreter creation), never per frame. The
    returned callable gives the captured text, for the debug log when the call failed. Under
    ``edged run`` (a ``NativeOutputForwarder`` is active) fds 1/2 are left alone: what arrives
    meanwhile is logged at DEBUG, from whichever thread it comes. Otherwise, unless debug
    logging is on, fds 1/2 go to a temp file for the duration.
    """
    forwarder = _active
    if forwarder is not None:
        with forwarder.section() as lines, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield lambda: "\n".join(lines())
        return
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


@contextlib.contextmanager
def native_lines() -> Iterator[Callable[[], list[str]]]:
    """The native lines written meanwhile (e.g. FFmpeg saying why an open failed), logged as
    usual; under ``edged run`` only (elsewhere nobody reads fd 2 for us: always empty)."""
    forwarder = _active
    if forwarder is None:
        yield list
        return
    with forwarder.section() as lines:
        yield lines
