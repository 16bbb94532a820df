"""Boot a Debian root with systemd as PID 1 (``systemd-nspawn -b``) and run a driver in it.

A driver is a Python script (standard library only: it runs with the root's own
``/usr/bin/python3``) that a oneshot unit starts once the system is up; it reads
``/root/edged-test/params.json``, writes ``/root/edged-test/results.json`` (after every step, so
that a hang leaves a trace) with ``"done": true`` at the end, and the unit powers the container
off when it ends either way. Everything is bounded: the unit by ``TimeoutStartSec=``, the
container by a host-side timeout after which nspawn is asked to power off and then killed; a
container that did not finish fails the test with its console and journal attached.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

TEST_DIR = "root/edged-test"  # inside the root

DRIVER_UNIT = """\
[Unit]
Description=edged system test driver ({driver})
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /root/edged-test/driver.py
TimeoutStartSec={budget}
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


def nspawn(root: Path, *cmd: str, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """A command in the root, not booted (e.g. apt before the first boot), host network."""
    setenv = [f"--setenv={k}={v}" for k, v in (env or {}).items()]
    return subprocess.run(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D",
                           str(root), *setenv, *cmd], capture_output=True, text=True,
                          check=False, timeout=timeout)


def copy_checkout(dest: Path) -> None:
    """What a clone of this tree would give: tracked and new (not ignored) files, so no .venv,
    no downloaded assets, no build output."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True, check=True)
    for rel in filter(None, listed.stdout.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def journal_of(root: Path) -> str:
    """The container's persistent journal, read from the host (also after a hang)."""
    proc = subprocess.run(["journalctl", "-D", str(root / "var/log/journal"), "--no-pager",
                           "-o", "short-monotonic"], capture_output=True, text=True,
                          check=False)
    return proc.stdout


def _terminate_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _power_off(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: nspawn asks the container's systemd to power off; SIGKILL if it will not."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def boot(root: Path, driver: Path, params: dict[str, Any], budget_s: float, *,
         private_network: bool = True, nspawn_args: Sequence[str] = ()) -> dict[str, Any]:
    """Boot ``root``; ``driver`` runs inside and powers off. Returns its results plus
    ``_secs`` and ``_console``.

    ``private_network``: loopback only (an offline install is then offline for sure, and ports
    cannot collide with the host's); otherwise the host's network is shared.
    """
    test_dir = root / TEST_DIR
    test_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(driver, test_dir / "driver.py")
    (test_dir / "params.json").write_text(json.dumps(params))
    (test_dir / "results.json").unlink(missing_ok=True)
    unit = root / "etc/systemd/system/edged-test.service"
    unit.write_text(DRIVER_UNIT.format(driver=driver.name, budget=int(budget_s)))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "edged-test.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/edged-test.service")
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)  # persistent: read after
    console = root.parent / f"{root.name}-console.log"
    cmd = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(root),
           *(["--private-network"] if private_network else []), *nspawn_args,
           "-b", "--console=pipe"]
    t0 = time.monotonic()
    with console.open("w") as out:
        # Its own session (Ctrl-C in the terminal must not reach the container's init), but
        # it dies with us: SIGTERM when this test process goes (nspawn then powers it off).
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_terminate_with_parent)
        hung = False
        try:
            proc.wait(budget_s + 60)
        except subprocess.TimeoutExpired:
            hung = True
            _power_off(proc)
        except BaseException:  # interrupted (Ctrl-C, pytest's timeout): never leave it running
            _power_off(proc)
            raise
    secs = time.monotonic() - t0
    res_path = test_dir / "results.json"
    results: dict[str, Any] = json.loads(res_path.read_text()) if res_path.exists() else {}
    results["_secs"] = round(secs, 1)
    results["_console"] = console.read_text(errors="replace")[-6000:]
    if hung or not results.get("done"):
        how = "hung, killed after" if hung else "exited after"
        pytest.fail(f"the booted container did not finish ({how} {secs:.0f} s, nspawn exit "
                    f"{proc.returncode}); steps recorded: "
                    f"{list(results.get('steps', {}))}\n--- console ---\n"
                    f"{results['_console']}\n--- journal ---\n{journal_of(root)[-8000:]}")
    return results
