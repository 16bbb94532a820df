"""The native-output logger process of ``edged run`` (see ``edged._native``).

    python -m edged._nativelog MODE LEVEL BACK_FD

Reads what native libraries write to the daemon's fds 1/2 (this process's stdin) line by line
and writes each line to this process's stdout (the daemon's original stderr: the journal or
the terminal) with a priority -- ``<4>`` (WARNING) by default, ``<6>`` (INFO) for lines that are
clearly informational -- rate-limited, control characters escaped, overlong lines cut. Every
line is also offered to the daemon on BACK_FD (never blocking: dropped when the daemon does not
read), so it can tell why a camera failed to open.

A process of its own, not a thread of the daemon, for two reasons: a library that writes to
fd 2 while holding Python's lock can never block on a pipe only a Python thread drains, and the
last words of a daemon that aborts (a libzmq assertion) still reach the journal: this process
reads until the daemon's end of the pipe is closed, then exits. It ignores SIGTERM/SIGINT/SIGHUP
(systemd signals the whole cgroup on stop) for the same reason. Standard library only.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import re
import signal
import sys
import time

MAX_LINES = 20  # native lines written per window; the rest are counted, then reported once
WINDOW_S = 10.0
MAX_LINE_BYTES = 2048  # a longer line is cut (a library writing megabytes without a newline)
TAIL_LINES = 5  # suppressed lines written anyway when the daemon ends
SYNC = b"\x00edged-sync-"  # the daemon's tokens: passed back, never written

# Lines that say what happened, not that something is wrong: TFLite's "INFO: Created
# TensorFlow Lite XNNPACK delegate for CPU.", OpenCV's "[ INFO:0@1.2] ...", glog's I0123 ...
_INFO = re.compile(r"^(INFO: |\[ ?INFO[:\]]|I\d{4} \d\d:\d\d)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def clean(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace").rstrip("\r")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Forwarder:
    def __init__(self, mode: str, level: int, back: int | None, out: int = 1) -> None:
        self.mode = mode
        self.level = level
        self.back = back
        self.out = out
        self.window_start = time.monotonic()
        self.logged = 0
        self.suppressed = 0
        # The last lines left out: written at the end, for they may be the daemon's last words
        # (an assertion after a flood of warnings).
        self.tail: collections.deque[tuple[bool, str]] = collections.deque(maxlen=TAIL_LINES)

    def _write(self, priority: int, name: str, text: str) -> None:
        line = f"<{priority}>{text}\n" if self.mode == "journal" else f"edged: {name}: {text}\n"
        data = line.encode("utf-8", "backslashreplace")
        while data:
            try:
                data = data[os.write(self.out, data):]
            except InterruptedError:
                continue
            except OSError:
                return  # nowhere to write to: nothing better to do

    def _offer(self, data: bytes) -> None:
        if self.back is None:
            return
        try:
            os.write(self.back, data)
        except BlockingIOError:
            pass  # the daemon is busy: it misses this line's copy, the log has it
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EBADF):
                self.back = None  # the daemon is gone
            # anything else: drop this copy

    def line(self, raw: bytes) -> None:
        if (i := raw.find(SYNC)) >= 0:  # after a partial line written by another thread
            self._offer(raw[i:] + b"\n")
            raw = raw[:i]
        text = clean(raw)
        if not text.strip():
            return
        self._offer(text.encode("utf-8", "backslashreplace")[:MAX_LINE_BYTES] + b"\n")
        info = bool(_INFO.match(text))
        if (20 if info else 30) < self.level:
            return
        self.end_window(time.monotonic())
        if self.logged >= MAX_LINES:
            self.suppressed += 1
            self.tail.append((info, text))
            return
        self.logged += 1
        self._write(6 if info else 4, "INFO" if info else "WARNING", text)

    def end_window(self, now: float) -> None:
        if now - self.window_start < WINDOW_S:
            return
        if self.suppressed:
            last = " (the last ones follow)" if now == float("inf") else ""
            self._write(4, "WARNING", f"suppressed {self.suppressed} more native output lines "
                                      f"(at most {MAX_LINES} per {WINDOW_S:g} s){last}")
            if now == float("inf"):  # the end: what came last may say why
                for info, text in self.tail:
                    self._write(6 if info else 4, "INFO" if info else "WARNING", text)
        self.window_start = now
        self.logged = 0
        self.suppressed = 0
        self.tail.clear()

    def run(self, fd: int = 0) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while (i := buf.find(b"\n")) >= 0 or len(buf) >= MAX_LINE_BYTES:
                if 0 <= i < MAX_LINE_BYTES:
                    line, buf = buf[:i], buf[i + 1:]
                else:  # cut an overlong line; the rest follows as its own line
                    line, buf = buf[:MAX_LINE_BYTES], buf[MAX_LINE_BYTES:]
                self.line(line)
        if buf:
            self.line(buf)
        self.end_window(float("inf"))


def main(argv: list[str]) -> int:
    mode, level, back = argv
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    back_fd = int(back)
    fcntl.fcntl(back_fd, fcntl.F_SETFL, fcntl.fcntl(back_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    Forwarder(mode, _LEVELS.get(level, 20), back_fd).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
