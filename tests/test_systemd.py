"""systemd integration without systemd: a real NOTIFY_SOCKET, real signals, the real unit file
checked by systemd-analyze, the Yocto recipe by oelint-adv, the install script into a temp root."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edged.media import SAMPLE_CLIP
from edged.service.log import JOURNAL_SOCKET
from tests.conftest import REPO
from tests.daemon_util import Daemon, FakeSystemd, free_port, write_config

UNIT = REPO / "systemd" / "edged.service"


def _cfg(tmp: Path, **over: object) -> Path:
    camera = {"name": "cam", "source": str(SAMPLE_CLIP)}
    camera.update(over.pop("camera", {}))  # type: ignore[arg-type]
    return write_config(tmp / "c.yaml", camera=camera,
                        publish={"endpoints": [f"tcp://127.0.0.1:{free_port()}"]}, **over)


def test_notify_protocol_ready_watchdog_status_reload_stop(tmp_path: Path) -> None:
    sd = FakeSystemd(tmp_path)
    cfg = _cfg(tmp_path)
    env = {"NOTIFY_SOCKET": str(sd.path), "WATCHDOG_USEC": "2000000"}  # ping every 1 s
    try:
        with Daemon(tmp_path, cfg, env) as d:
            ready = sd.wait_for("READY", "1", 60)
            statuses_before = [f["STATUS"] for t, f in sd.datagrams if t < ready
                               and "STATUS" in f]
            assert any(s.startswith("warming_up") for s in statuses_before)
            ready_fields = next(f for t, f in sd.datagrams if t == ready)
            # READY=1 once the engine is warm; the camera may not have delivered yet
            assert ready_fields["STATUS"].startswith(
                ("running", "source_down (opening the source: no frame yet)")), ready_fields
            assert "warm-up" in ready_fields["STATUS"]  # the engine ran its warm-up invoke
            deadline = time.monotonic() + 10  # then the first frame: STATUS every second
            while not any(f.get("STATUS", "").startswith("running") for _, f in sd.datagrams):
                assert time.monotonic() < deadline, sd.datagrams[-5:]
                sd.pump(0.2)
            sd.pump(4.5)
            pings = [t for t in sd.times("WATCHDOG") if t > ready]
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert len(pings) >= 3 and all(0.7 <= g <= 1.4 for g in gaps), gaps
            counts = {f["STATUS"] for t, f in sd.datagrams if t > ready and "STATUS" in f}
            assert len(counts) >= 2  # STATUS= kept current (frame counts move)
            # SIGHUP: RELOADING=1 (with MONOTONIC_USEC) then READY=1
            cfg.write_text(cfg.read_text().replace("name: cam", "name: cam2"))
            mark = time.monotonic()
            d.signal(signal.SIGHUP)
            reloading = sd.wait_for("RELOADING", "1", 10, after=mark)
            again = sd.wait_for("READY", "1", 20, after=reloading)
            assert mark <= reloading <= again
            assert any("MONOTONIC_USEC" in f for t, f in sd.datagrams if t == reloading)
            mark = time.monotonic()
            code, _ = d.stop()
            sd.pump(0.3)
        assert code == 0
        assert [t for t in sd.times("STOPPING") if t >= mark]
    finally:
        sd.close()


def test_hung_inference_starves_the_watchdog(tmp_path: Path, recording_delegate: Path) -> None:
    """A delegate whose invoke() blocks for good mid-stream (a wedged NPU driver: the test
    delegate's hang_after; its probe child and the warm-up invoke once each, below 25)."""
    sd = FakeSystemd(tmp_path)
    cfg = _cfg(tmp_path, inference={"watchdog_timeout_s": 1.5,
                                    "delegate": str(recording_delegate),
                                    "delegate_options": {"hang_after": "25"}})
    env = {"NOTIFY_SOCKET": str(sd.path), "WATCHDOG_USEC": "1000000"}  # ping every 0.5 s
    hang_line = "recording delegate: invoke 26 blocks forever"
    try:
        with Daemon(tmp_path, cfg, env) as d:
            sd.wait_for("READY", "1", 60)
            assert "falling back" not in d.stderr  # the frames run through the delegate
            deadline = time.monotonic() + 30
            while hang_line not in d.stderr and time.monotonic() < deadline:
                sd.pump(0.1)
            hung_at = time.monotonic()
            assert hang_line in d.stderr, d.stderr[-2000:]
            sd.pump(4.0)
            assert d.proc.poll() is None  # alive, just stuck: systemd must restart it
            last_ping = max(sd.times("WATCHDOG"))
            assert last_ping - hung_at <= 1.5 + 0.5 + 0.3  # the limit, one period, slack
            assert not [t for t in sd.times("WATCHDOG") if t > hung_at + 2.3]
            assert "no longer feeding the systemd watchdog" in d.stderr
            code, took = d.stop()
        assert code == 0 and took < 2.0
    finally:
        sd.close()


def test_camera_down_keeps_the_watchdog_fed(tmp_path: Path) -> None:
    sd = FakeSystemd(tmp_path)
    cfg = _cfg(tmp_path, camera={"source": f"http://127.0.0.1:{free_port()}/nothing.ts",
                                 "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5},
               inference={"watchdog_timeout_s": 1.0})
    env = {"NOTIFY_SOCKET": str(sd.path), "WATCHDOG_USEC": "1000000"}
    try:
        with Daemon(tmp_path, cfg, env) as d:
            ready = sd.wait_for("READY", "1", 60)
            sd.pump(4.0)
            pings = [t for t in sd.times("WATCHDOG") if t > ready]
            assert len(pings) >= 6  # 0.5 s period over 4 s, camera never up
            assert any("source_down" in f.get("STATUS", "") for _, f in sd.datagrams)
            assert d.stop()[0] == 0
    finally:
        sd.close()


# --- the unit file -----------------------------------------------------------------------------

def _unit_with_real_execstart(tmp_path: Path) -> Path:
    edged = Path(sys.executable).with_name("edged")
    assert edged.is_file()
    unit = tmp_path / "edged.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/edged", str(edged)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_with_real_execstart(tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    broken = tmp_path / "broken" / "edged.service"
    broken.parent.mkdir()
    broken.write_text(UNIT.read_text().replace("/usr/bin/edged", "/nonexistent/edged"))
    assert subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                          check=False).returncode != 0  # the check can fail


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_security_exposure(tmp_path: Path) -> None:
    unit = _unit_with_real_execstart(tmp_path)
    # 1.4 measured (systemd 252) on the unit that tests/system/test_systemd_boot.py runs under
    # a booted systemd; --threshold is that figure x10.
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=14",
                           str(unit)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if "Overall exposure level" in ln)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 1.4, line
    text = UNIT.read_text()
    for needed in ("Type=notify", "WatchdogSec=", "SupplementaryGroups=video",
                   "DeviceAllow=char-video4linux", "DeviceAllow=/dev/galcore",
                   "DeviceAllow=/dev/ethosu0", "RuntimeDirectory=edged", "CacheDirectory=edged",
                   "ProtectSystem=strict", "MemoryDenyWriteExecute=yes", "PrivateUsers=yes",
                   # what the booted test found the daemon needs (libzmq aborts without them)
                   "SystemCallFilter=sched_setscheduler",
                   "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
                   # no /bin/kill on a minimal Debian: the shell's builtin
                   'ExecReload=/bin/sh -c "kill -HUP $MAINPID"'):
        assert needed in text, needed
    # systemd 252 (bookworm) ignores Type=notify-reload and would run the unit as Type=simple
    assert "\nType=notify-reload" not in text
    assert "PrivateDevices=yes" not in text  # would hide the camera and the NPU


def test_yocto_recipe_lints_clean() -> None:
    oelint = Path(sys.executable).with_name("oelint-adv")
    recipe = REPO / "deploy/yocto/meta-edged/recipes-edged/edged/edged_0.1.0.bb"
    proc = subprocess.run([str(oelint), "--quiet", str(recipe)], capture_output=True,
                          text=True, check=False)
    findings = (proc.stdout + proc.stderr).splitlines()
    assert findings, "oelint-adv printed nothing: did it run?"
    assert not [f for f in findings if ":error:" in f], findings
    import hashlib
    md5 = hashlib.md5((REPO / "LICENSE").read_bytes()).hexdigest()
    assert f"file://LICENSE;md5={md5}" in recipe.read_text()


def test_install_script_into_a_temp_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = subprocess.run(["sh", str(REPO / "deploy/install.sh"), "--destdir", str(root),
                           "--prefix", "/opt/edged", "--no-deps", "--python", sys.executable],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for rel in ("opt/edged/bin/python", "opt/edged/bin/edged", "etc/edged/config.yaml",
                "lib/systemd/system/edged.service", "usr/lib/sysusers.d/edged.conf",
                "usr/share/doc/edged/README.md", "usr/share/doc/edged/config.example.yaml"):
        assert (root / rel).exists(), rel
    assert os.readlink(root / "usr/bin/edged") == "/opt/edged/bin/edged"
    assert (root / "opt/edged/bin/edged").read_text().startswith("#!/opt/edged/bin/python")
    assert str(root) not in (root / "opt/edged/pyvenv.cfg").read_text()
    sysusers = (root / "usr/lib/sysusers.d/edged.conf").read_text()
    assert "u edged" in sysusers and "m edged video" in sysusers
    assert yaml.safe_load((root / "etc/edged/config.yaml").read_text())["inference"][
        "cache_dir"] == "/var/cache/edged"
    # a real (non-editable) install carries every subpackage and its data files
    site = next((root / "opt/edged/lib").glob("python3*/site-packages/edged"))
    for sub in ("core", "api", "engine", "tools", "export", "pipeline", "service", "models",
                "media"):
        assert (site / sub / "__init__.py").is_file(), sub
    for data in ("models/yolov3-tiny-416.yaml", "models/yolov3-tiny-416_int8.tflite",
                 "models/yolov3-tiny-416_int8_vela.tflite", "media/eagle.mp4",
                 "api/messages.schema.json"):
        assert (site / data).is_file(), data
    # the staged package itself runs (with the interpreter inside the staged venv)
    run = subprocess.run([str(root / "opt/edged/bin/python"), "-c",
                          "import edged, edged.cli; print(edged.__version__)"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "0.1.0", run.stderr
    # a second run keeps the edited config
    (root / "etc/edged/config.yaml").write_text("# mine\n")
    again = subprocess.run(["sh", str(REPO / "deploy/install.sh"), "--destdir", str(root),
                            "--no-deps", "--python", sys.executable], capture_output=True,
                           text=True, check=False, timeout=600)
    assert again.returncode == 0
    assert (root / "etc/edged/config.yaml").read_text() == "# mine\n"
    assert (root / "etc/edged/config.yaml.new").exists()


def test_install_script_rejects_bad_options(tmp_path: Path) -> None:
    proc = subprocess.run(["sh", str(REPO / "deploy/install.sh"), "--frobnicate"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "unknown option --frobnicate" in proc.stderr
    for args, says in ((["--wheels", str(tmp_path / "nothing")], "is not a directory"),
                       (["--extras", "systemd;rm"], "comma-separated"),
                       (["--wheels"], "needs a directory")):
        proc = subprocess.run(["sh", str(REPO / "deploy/install.sh"), *args],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and says in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --- logging -----------------------------------------------------------------------------------

def test_journal_handler_carries_structured_fields() -> None:
    pytest.importorskip("systemd.journal", reason="needs systemd-python (pip install "
                                                  "'edged[systemd]')")
    from edged.service.log import CONTEXT, journal_handler

    sent: list[tuple[str, dict[str, object]]] = []

    def sender(*args: str, **fields: object) -> None:  # as systemd.journal.send(MESSAGE, ...)
        sent.append((args[0], fields))

    handler = journal_handler(sender)
    assert handler is not None
    log = logging.getLogger("edged.test.journal")
    log.addHandler(handler)
    log.propagate = False
    try:
        CONTEXT.set(camera="balcony", backend="vx", model="yolov3-tiny-416")
        log.warning("falling back to the CPU: %s", "no delegate")
    finally:
        log.removeHandler(handler)
    message, fields = sent[-1]
    assert message == "falling back to the CPU: no delegate"
    assert fields["CAMERA"] == "balcony" and fields["BACKEND"] == "vx"
    assert fields["MODEL"] == "yolov3-tiny-416" and fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "edged"


def test_stderr_priority_prefixes_under_journal_stream(tmp_path: Path) -> None:
    err = tmp_path / "stderr.log"
    cfg = _cfg(tmp_path)
    with err.open("w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)],
                                cwd=REPO, stderr=fh, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while "-> running" not in err.read_text() and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    lines = [ln for ln in err.read_text().splitlines() if ln]
    if JOURNAL_SOCKET.exists() and importlib.util.find_spec("systemd") is not None:
        # A machine running journald, with systemd-python: edged sends its records to the
        # journal itself (structured fields); only native libraries' lines (through
        # edged._nativelog) reach the stream, each with its priority.
        assert all(re.match(r"<[0-7]>", ln) for ln in lines), lines[:5]
        assert not any("state:" in ln for ln in lines), lines[:5]
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(["journalctl", f"_PID={proc.pid}", "-o", "json", "--no-pager"],
                                 capture_output=True, text=True, check=False).stdout
            records = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
            running = [r for r in records if str(r.get("MESSAGE")).endswith("-> running")]
            if running or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert running and running[0].get("CAMERA") == "cam", records[-5:]
    else:
        assert lines and all(ln[:3] in ("<6>", "<4>", "<3>", "<7>") for ln in lines), lines[:5]
        assert any(ln.startswith("<6>publishing on") for ln in lines)
    # in a terminal (no JOURNAL_STREAM) the same lines have no prefix
    plain = subprocess.run([sys.executable, "-m", "edged", "check-config", str(cfg)],
                           capture_output=True, text=True, check=False)
    assert plain.returncode == 0 and not plain.stderr.startswith("<")
