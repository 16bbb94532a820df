"""Try a delegate in a child process first: a vendor delegate that segfaults or hangs during
graph preparation or its first invoke must cost a fallback, not the daemon.

    python -m edged.engine.probe RUNTIME LIBRARY OPTIONS_JSON MODEL THREADS PARENT_PID

Exit 0: the delegate loaded, the interpreter was built and one invoke ran. Exit 1: an error
(its message on stderr). Killed by a signal: the delegate crashed.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class ProbeCancelled(Exception):
    """The probe was abandoned because the daemon is stopping (its child was killed)."""


def probe_in_child(runtime: str, library: str, options: dict[str, str], model: Path,
                   threads: int, timeout_s: float,
                   cancel: threading.Event | None = None) -> str | None:
    """None if the delegate works in a child process, else why not. ``cancel`` set: the child
    is killed at once and ``ProbeCancelled`` raised (a SIGTERM during a reload's probe)."""
    cmd = [sys.executable, "-m", "edged.engine.probe", runtime, library,
           json.dumps(options), str(model), str(threads), str(os.getpid())]
    # The child's output goes to a file, not a pipe: a chatty vendor library (graph compile
    # logs) must not block on a full pipe and look hung. Its last line is the reason.
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                if cancel is not None and cancel.is_set():
                    raise ProbeCancelled(f"delegate {library} probe cancelled")
                if time.monotonic() >= deadline:
                    return (f"delegate {library} did not finish its warm-up within "
                            f"{timeout_s:g} s (hung)")
                (cancel or threading.Event()).wait(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        size = out.seek(0, os.SEEK_END)
        out.seek(max(size - (1 << 16), 0))
        stderr = out.read().decode(errors="replace")
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"delegate {library} crashed ({name}) during its warm-up"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"delegate probe failed (exit {proc.returncode})"


def _die_with(parent: int) -> None:
    """A probe outliving edged (killed by the watchdog, SIGKILL) would hold the NPU: have the
    kernel kill it with its parent (Linux), and end at once if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        raise SystemExit(1)


def main(argv: list[str]) -> int:
    from edged.engine.runtime import load_runtime, make_interpreter
    from edged.errors import first_line

    runtime_name, library, options, model, threads, parent = argv
    _die_with(int(parent))
    try:
        runtime = load_runtime(runtime_name)
        delegate = runtime.load_delegate(library, json.loads(options))
        interp = make_interpreter(runtime, Path(model), int(threads), [delegate])
        d = interp.get_input_details()[0]
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interp.invoke()
    except Exception as e:  # reported to the parent as one line
        msg = first_line(e)
        print(f"delegate {library} failed its warm-up: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
