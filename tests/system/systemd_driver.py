"""The operator, inside a booted Debian container (systemd as PID 1).

Copied into the container by ``test_systemd_boot.py`` and run there by a oneshot unit, as root,
with Debian's own ``/usr/bin/python3`` (standard library only). It does what an operator does
with the installed edged unit -- ``systemctl start``, a subscriber in group ``edged`` on the ipc
socket, ``systemctl reload`` after editing the threshold, a hung daemon, ``systemctl stop``,
``journalctl`` -- and records what it saw in ``results.json`` after every step, so that a hang
still leaves a trace. It asserts nothing: the test on the host does, with the journal attached.
Every wait is bounded by a deadline the host passes in (from this machine's measured speed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARAMS: dict[str, Any] = json.loads((HERE / "params.json").read_text())
RESULTS = HERE / "results.json"
IPC = "ipc:///run/edged/edged.sock"
TCP = "tcp://127.0.0.1:5556"
DROPIN_DIR = Path("/etc/systemd/system/edged.service.d")
CONFIG = Path("/etc/edged/config.yaml")
results: dict[str, Any] = {"scenario": PARAMS["scenario"], "steps": {}, "done": False}


def save() -> None:
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(RESULTS)


def step(name: str, **data: Any) -> None:
    results["steps"][name] = data
    save()


def run(cmd: list[str], timeout: float, user: str | None = None) -> dict[str, Any]:
    """Run a command (as ``user`` with that user's groups); never raises."""
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *cmd]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        rc: int | None = p.returncode
        out, err = p.stdout, p.stderr
    except OSError as e:  # no such program
        rc, out, err = 127, "", str(e)
    except subprocess.TimeoutExpired as e:
        rc = None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        err = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes)
               else e.stderr or "") + f"\n(timed out after {timeout:g} s)"
    return {"cmd": " ".join(cmd), "rc": rc, "out": out[-20000:], "err": err[-4000:],
            "secs": round(time.monotonic() - t0, 2)}


def show() -> dict[str, str]:
    props = "ActiveState,SubState,Result,MainPID,NRestarts,StatusText,ExecMainCode," \
            "ExecMainStatus,WatchdogUSec"
    p = run(["systemctl", "show", "edged", "-p", props], 30)
    return dict(line.split("=", 1) for line in p["out"].splitlines() if "=" in line)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def journal(since_us: int = 0) -> list[dict[str, Any]]:
    # Not run(): its output is cut to the last 20 000 characters, and a watchdog kill's
    # faulthandler dump alone is more than that in JSON.
    cmd = ["journalctl", "-b", "-u", "edged", "-o", "json", "--no-pager",
           f"--since=@{since_us / 1e6:.6f}" if since_us else "--since=@0"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    entries = []
    for line in out.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def journal_text() -> str:
    cmd = ["journalctl", "-b", "-u", "edged", "--no-pager", "-o", "short-monotonic"]
    return run(cmd, 60)["out"]


def now_us() -> int:
    return time.time_ns() // 1000


def subscribe(n: int, timeout: float, endpoint: str = IPC, user: str | None = "viewer"
              ) -> dict[str, Any]:
    """``edged sub --json``: the first ``n`` det messages (parsed), as ``user``."""
    p = run(["/usr/bin/edged", "sub", endpoint, "--topic", "det/", "--json", "--count", str(n),
             "--timeout", f"{timeout:g}"], timeout + 30, user=user)
    msgs = []
    for line in p["out"].splitlines():
        try:
            msgs.append(json.loads(line))
        except ValueError:
            continue
    p["out"] = p["out"][-2000:]
    return {"run": p, "messages": msgs}


CAMERA = Path("/srv/camera/clip.mp4")


def place_camera() -> None:
    """The clip bundled with edged as the camera, readable by group video only, as a camera's
    device node is: the daemon sees frames only through the unit's SupplementaryGroups=video."""
    CAMERA.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PARAMS["clip"], CAMERA)
    for path, mode in ((CAMERA.parent, 0o750), (CAMERA, 0o640)):
        shutil.chown(path, "root", "video")
        path.chmod(mode)


def write_config(threshold: float) -> None:
    # The operator's edits to the installed board template: the camera, every label, the
    # shipped tcp + ipc endpoints.
    CONFIG.write_text(
        "camera:\n"
        f"  name: {PARAMS['camera']}\n"
        f"  source: {CAMERA}\n"
        "inference:\n"
        "  delegate: auto\n"
        "  cache_dir: /var/cache/edged\n"
        "detection:\n"
        f"  conf_threshold: {threshold}\n"
        "publish:\n"
        "  endpoints:\n"
        f"    - {TCP}\n"
        f"    - {IPC}\n")


def proc_status(pid: str) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError as e:
        return {"error": str(e)}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def root_mount_options(pid: str) -> str:
    try:
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == "/":
                return fields[5]
    except OSError as e:
        return f"error: {e}"
    return ""


def install() -> None:
    src = "/usr/src/edged"
    r = run(["sh", f"{src}/deploy/install.sh", "--wheels", "/opt/wheels", "--extras", "systemd"],
            PARAMS["install_timeout_s"])
    step("install", **r)
    step("version", **run(["/usr/bin/edged", "--version"], 60))
    step("clip", **run(["/opt/edged/bin/python", "-c",
                        "from edged.media import SAMPLE_CLIP; print(SAMPLE_CLIP)"], 60))
    # Two local users: one the operator added to group edged, one not.
    Path("/etc/sysusers.d").mkdir(exist_ok=True)
    Path("/etc/sysusers.d/edged-test-users.conf").write_text(
        "u viewer - \"a local subscriber\" /nonexistent\nm viewer edged\n"
        "u outsider - \"not in group edged\" /nonexistent\n")
    step("users", **run(["systemd-sysusers"], 60))


def operator() -> None:
    t = PARAMS["timeouts"]
    DROPIN_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in PARAMS["dropins"].items():
        (DROPIN_DIR / name).write_text(text)
    place_camera()
    write_config(PARAMS["threshold"])
    step("check_config", **run(["/usr/bin/edged", "check-config", str(CONFIG)], 60))
    step("daemon_reload", **run(["systemctl", "daemon-reload"], 60))

    # 1. start: Type=notify, so this returns when edged sent READY=1 (or failed)
    start = run(["systemctl", "start", "edged"], t["start"])
    st = show()
    # READY=1 may come before the camera's first frame (state source_down, "no frame yet"):
    # the status follows within status_interval_s of that frame.
    wait_until(lambda: show().get("StatusText", "").startswith("running"), t["messages"])
    st = {**st, "StatusText": show().get("StatusText", "")}
    step("start", **start, show=st)
    if start["rc"] != 0 or st.get("ActiveState") != "active":
        time.sleep(1)
        step("start_failed", journal=journal_text())
        return
    pid = st["MainPID"]
    step("process", status=proc_status(pid), root_mount=root_mount_options(pid),
         id_edged=run(["id", "edged"], 10)["out"].strip(),
         run_dir=run(["stat", "-c", "%a %U:%G", "/run/edged"], 10)["out"].strip(),
         socket=run(["stat", "-c", "%a %U:%G", "/run/edged/edged.sock"], 10)["out"].strip())

    # 2. a local subscriber in group edged on the ipc socket; a user outside it is refused
    first = subscribe(PARAMS["messages"], t["messages"])
    step("subscribe", **first)
    if first["run"]["rc"] != 0:
        return  # the host fails here
    probe = ("import socket; s = socket.socket(socket.AF_UNIX); "
             "s.connect('/run/edged/edged.sock'); print('connected')")
    step("outsider", **run(["python3", "-c", probe], 30, user="outsider"))
    step("subscribe_tcp", **subscribe(3, t["messages"], endpoint=TCP, user=None))

    # 3. reload: a higher threshold (the median score seen so far), same process
    scores = sorted(d["score"] for m in first["messages"] for d in m["detections"])
    new_threshold = round(scores[len(scores) // 2], 2) if scores else 0.5
    new_threshold = min(max(new_threshold, PARAMS["threshold"] + 0.01), 0.95)
    before = show()
    write_config(new_threshold)
    mark = now_us()
    reload = run(["systemctl", "reload", "edged"], t["reload"])
    applied: list[dict[str, Any]] = []

    def find_applied() -> bool:
        applied[:] = [e for e in journal(mark) if "reload: applied" in str(e.get("MESSAGE"))]
        return bool(applied)

    # systemd 252 ends the reload job when ExecReload's kill exits, which can be before edged
    # has read the file: wait for edged to say so.
    wait_until(find_applied, t["reload"])
    applied_us = int(applied[0]["__REALTIME_TIMESTAMP"]) if applied else None
    after_msgs = subscribe(PARAMS["messages"], t["messages"]) if applied else None
    step("reload", **reload, threshold=new_threshold, before=before, after=show(),
         applied_us=applied_us, subscribe=after_msgs)
    if reload["rc"] != 0 or not applied:
        return  # the host fails here; the rest would only cost time

    # 4. a hung daemon: SIGSTOP; the watchdog (WatchdogSec from the drop-in) restarts it
    st = show()
    pid, restarts = st["MainPID"], int(st.get("NRestarts", "0"))
    mark = now_us()
    try:  # (a minimal Debian has no kill(1))
        os.kill(int(pid), signal.SIGSTOP)
        kill = {"rc": 0, "pid": pid}
    except (OSError, ValueError) as e:
        kill = {"rc": 1, "pid": pid, "err": str(e)}
    st2: dict[str, str] = {}

    def restarted() -> bool:
        st2.update(show())
        return (int(st2.get("NRestarts", "0")) > restarts and st2.get("MainPID") not in
                ("0", pid) and st2.get("ActiveState") == "active"
                and st2.get("SubState") == "running")

    ok = wait_until(restarted, t["watchdog"], 0.5)
    events = [str(e.get("MESSAGE")) for e in journal(mark)
              if e.get("SYSLOG_IDENTIFIER") == "systemd"]
    step("watchdog", kill=kill, before=st, after=dict(st2), restarted=ok,
         systemd_said=events[:60],  # from the SIGSTOP on: the timeout comes first
         edged_said=[str(e.get("MESSAGE")) for e in journal(mark - 30_000_000)
                     if e.get("SYSLOG_IDENTIFIER") != "systemd"][:60],
         subscribe=subscribe(PARAMS["messages"], t["start"] + t["messages"]) if ok else None)

    # 5. stop
    stop = run(["systemctl", "stop", "edged"], t["stop"])
    step("stop", **stop, show=show())

    # 6. the journal: structured fields on edged's records
    entries = journal()
    fields = [{k: e.get(k) for k in ("CAMERA", "BACKEND", "MODEL", "SYSLOG_IDENTIFIER",
                                      "MESSAGE", "PRIORITY")}
              for e in entries if e.get("SYSLOG_IDENTIFIER") == "edged"]
    step("journal", entries=fields[-200:], n=len(entries))


def main() -> None:
    try:
        if PARAMS["scenario"] == "install":
            install()
        else:
            operator()
    except Exception as e:  # recorded for the host; the unit's FailureAction powers off
        results["error"] = f"{type(e).__name__}: {e}"
        save()
        raise
    finally:
        results["journal"] = journal_text()[-60000:]
        results["done"] = True
        save()
        if shutil.which("sync"):
            os.sync()


if __name__ == "__main__":
    main()
