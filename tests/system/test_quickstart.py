"""The README's quick start, exactly as printed, on a fresh Debian machine: a minimal bookworm
root booted with systemd as PID 1, a clean checkout (``git ls-files``: no .venv, no downloaded
assets), root, and the two commands ``sh deploy/demo.sh`` and ``sh deploy/test.sh``.

The container shares the host's network and gets the host's CA bundle and proxy settings
(``trust_host_network``, ``host_network_env``): this machine reaches PyPI through a TLS proxy.
pip's cache and apt's package archive inside the container are bind-mounted from
``~/.cache/edged-tests/quickstart/`` so that a second run downloads nothing again; the commands
still resolve and install everything themselves. Inside, the system tests skip (nspawn cannot
nest); they run on the host.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.system.booted import boot, copy_checkout
from tests.system.rootfs import (
    cache_dir,
    debian_root,
    host_network_env,
    require_system_tools,
    trust_host_network,
)
from tests.timing import Speed, sample_clip

pytestmark = pytest.mark.system

DRIVER = Path(__file__).with_name("quickstart_driver.py")
COMMANDS = ("sh deploy/demo.sh", "sh deploy/test.sh")
CHECKOUT = "/root/edged"


def test_readme_quick_start_in_a_fresh_container(tmp_path: Path, speed: Speed) -> None:
    require_system_tools()
    # The README's lines, as printed (a trailing "# comment" included: sh runs them verbatim).
    readme = [ln.strip().removeprefix("$").strip()
              for ln in (REPO / "README.md").read_text().splitlines()]
    printed = {}
    for cmd in COMMANDS:
        found = [ln for ln in readme if ln.split("#")[0].strip() == cmd]
        assert found, f"the README's quick start no longer prints {cmd!r}"
        printed[cmd] = found[0]
    t0 = time.monotonic()
    root = debian_root("amd64", tmp_path / "root")
    trust_host_network(root)
    copy_checkout(root / CHECKOUT.lstrip("/"))
    caches = cache_dir() / "quickstart"
    binds = []
    for name, inside in (("pip", "/root/.cache/pip"), ("apt", "/var/cache/apt/archives")):
        (caches / name).mkdir(parents=True, exist_ok=True)
        (root / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        binds.append(f"--bind={caches / name}:{inside}")
    (caches / "apt" / "partial").mkdir(exist_ok=True)
    warm = any((caches / "pip").iterdir())
    timeouts = {
        "demo": 1200.0,  # apt-get python3-venv + pip install of the runtime (cold: downloads)
        "message": speed.deadline(1, base_s=2.0, paced_fps=sample_clip().fps),
        "stop": 20.0,
        "test": 3000.0,  # apt test packages, the .venv with TensorFlow, ruff, mypy, pytest
    }
    params = {"checkout": CHECKOUT, "env": host_network_env(), "timeouts": timeouts,
              "demo": printed[COMMANDS[0]], "test": printed[COMMANDS[1]]}
    budget = sum(timeouts.values()) + 30 + 120
    results = boot(root, DRIVER, params, budget, private_network=False, nspawn_args=binds)
    steps = results["steps"]
    assert "error" not in results, results["error"]
    demo = steps["demo"]
    msgs = [json.loads(ln) for ln in demo["sub"]["out"].splitlines() if ln.startswith("{")]
    assert demo["sub"]["rc"] == 0 and msgs and msgs[0]["kind"] == "detections", \
        f"sh deploy/demo.sh: no det message: {demo['sub']}\n--- demo ---\n{demo['log']}"
    assert demo["rc"] == 0, f"demo after Ctrl-C exited {demo['rc']}:\n{demo['log']}"
    # runtime only: TensorFlow alone would be ~1.5 GB (the test venv is ~1.9 GB)
    assert demo["venv_run_mb"] is not None and int(demo["venv_run_mb"]) < 600, \
        f".venv-run is {demo['venv_run_mb']} MB"
    test = steps["test"]
    assert test["rc"] == 0, f"sh deploy/test.sh exited {test['rc']}:\n{test['log'][-15000:]}"
    summary = [ln for ln in test["log"].splitlines() if " passed" in ln]
    assert summary, test["log"][-5000:]
    print(f"\nquick start ({'warm' if warm else 'cold'} pip/apt caches): "
          f"container {results['_secs']:.0f} s of {time.monotonic() - t0:.0f} s; demo.sh up "
          f"in {demo['ready_s']:.0f} s, .venv-run {demo['venv_run_mb']} MB; test.sh "
          f"{test['secs']:.0f} s, .venv {test['venv_mb']} MB: {summary[-1]}")
