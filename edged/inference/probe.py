"""Try a delegate in a child process first: a vendor delegate that segfaults or hangs during
graph preparation or its first invoke must cost a fallback, not the daemon.

    python -m edged.inference.probe RUNTIME LIBRARY OPTIONS_JSON MODEL THREADS

Exit 0: the delegate loaded, the interpreter was built and one invoke ran. Exit 1: an error
(its message on stderr). Killed by a signal: the delegate crashed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np


def probe_in_child(runtime: str, library: str, options: dict[str, str], model: Path,
                   threads: int, timeout_s: float) -> str | None:
    """None if the delegate works in a child process, else why not."""
    cmd = [sys.executable, "-m", "edged.inference.probe", runtime, library,
           json.dumps(options), str(model), str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return f"delegate {library} did not finish its warm-up within {timeout_s:g} s (hung)"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"delegate {library} crashed ({name}) during its warm-up"
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"delegate probe failed (exit {proc.returncode})"


def main(argv: list[str]) -> int:
    from edged.errors import first_line
    from edged.inference.runtime import load_runtime, make_interpreter

    runtime_name, library, options, model, threads = argv
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
