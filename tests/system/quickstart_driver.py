"""A new user on a fresh Debian machine, inside a booted container: the README's two commands.

Copied into the container by ``test_quickstart.py`` and run there (as root, by a oneshot unit)
with Debian's ``/usr/bin/python3``, standard library only. In a clean checkout it runs the
README's lines verbatim (``sh -c LINE``): ``sh deploy/demo.sh`` in the background until one det
message arrives (watched with ``.venv-run/bin/edged sub``, as the script's header says), stops
it with Ctrl-C (SIGINT), then ``sh deploy/test.sh``. Records everything in ``results.json``;
asserts nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARAMS: dict[str, Any] = json.loads((HERE / "params.json").read_text())
RESULTS = HERE / "results.json"
results: dict[str, Any] = {"steps": {}, "done": False}


def save() -> None:
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(RESULTS)


def step(name: str, **data: Any) -> None:
    results["steps"][name] = data
    save()


def tail(path: Path, n: int = 20000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def main() -> None:
    src = Path(PARAMS["checkout"])
    env = {**os.environ, "HOME": "/root", **PARAMS["env"]}
    t = PARAMS["timeouts"]
    demo_log = HERE / "demo.log"

    # 1. sh deploy/demo.sh, until a det message arrives
    t0 = time.monotonic()
    with demo_log.open("w") as out:
        # exec: Ctrl-C reaches what the line runs, not a wrapper shell (a terminal's shell
        # outlives the Ctrl-C; this wrapper would die of it and hide the real exit code)
        demo = subprocess.Popen(["sh", "-c", "exec " + PARAMS["demo"]], cwd=src, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    edged = src / ".venv-run/bin/edged"
    deadline = time.monotonic() + t["demo"]
    while time.monotonic() < deadline and demo.poll() is None and \
            "-> running" not in tail(demo_log):
        time.sleep(1)
    ready_s = time.monotonic() - t0
    sub: dict[str, Any] = {"rc": None, "out": "", "err": "demo did not come up"}
    if demo.poll() is None and edged.exists():
        p = subprocess.run([str(edged), "sub", "--topic", "det/", "--count", "1", "--json",
                            "--timeout", f"{t['message']:g}"], cwd=src, env=env,
                           capture_output=True, text=True, check=False,
                           timeout=t["message"] + 30)
        sub = {"rc": p.returncode, "out": p.stdout[-3000:], "err": p.stderr[-3000:]}
    # Ctrl-C, as a user would
    if demo.poll() is None:
        os.killpg(demo.pid, signal.SIGINT)
    try:
        demo_rc: int | None = demo.wait(t["stop"])
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait(10)
        demo_rc = None
    du = subprocess.run(["du", "-sm", str(src / ".venv-run")], capture_output=True, text=True,
                        check=False)
    step("demo", rc=demo_rc, ready_s=round(ready_s, 1), secs=round(time.monotonic() - t0, 1),
         log=tail(demo_log, 8000), sub=sub, venv_run_mb=du.stdout.split()[0] if du.stdout
         else None)

    # 2. sh deploy/test.sh
    t0 = time.monotonic()
    test_log = HERE / "test.log"
    with test_log.open("w") as out:
        try:
            rc: int | None = subprocess.run(["sh", "-c", "exec " + PARAMS["test"]],
                                            cwd=src, env=env,
                                            stdout=out, stderr=subprocess.STDOUT, check=False,
                                            timeout=t["test"]).returncode
        except subprocess.TimeoutExpired:
            rc = None
    du = subprocess.run(["du", "-sm", str(src / ".venv")], capture_output=True, text=True,
                        check=False)
    step("test", rc=rc, secs=round(time.monotonic() - t0, 1), log=tail(test_log, 30000),
         venv_mb=du.stdout.split()[0] if du.stdout else None)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        results["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        results["done"] = True
        save()
