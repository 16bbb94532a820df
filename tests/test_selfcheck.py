"""The accelerator must agree with the CPU: a real delegate (tests/delegate/recording_delegate.c)
that computes the model's last CONV_2D itself, honestly or corrupted like broken NPU delegates
(all zeros; moved by one grid cell), loaded by the real runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.engine.engine import AcceleratorUnavailable, EngineConfig, open_engine
from edged.engine.selfcheck import golden_images
from edged.media import GOLDEN, GOLDEN_DIR
from edged.models import DEFAULT_MODEL
from tests import timing
from tests.conftest import one_line_error, run_edged
from tests.daemon_util import Daemon, Listener, free_port, write_config

CORRUPTIONS = ("zeros", "shift")


def _engine(delegate: Path, record: Path, **options: str) -> EngineConfig:
    return EngineConfig(delegate=str(delegate),
                        delegate_options={"conv": "last", "record_file": str(record), **options})


def test_golden_images_are_the_bundled_ones() -> None:
    import hashlib

    for name, sha in GOLDEN.items():
        assert hashlib.sha256((GOLDEN_DIR / name).read_bytes()).hexdigest() == sha, name
    assert [img.shape[2] for img in golden_images()] == [3] * len(GOLDEN)


def test_an_honest_delegate_passes(recording_delegate: Path, tmp_path: Path) -> None:
    record = tmp_path / "rec.txt"
    eng = open_engine(DEFAULT_MODEL, _engine(recording_delegate, record))
    try:
        # the delegate really computed the last CONV_2D (a head) in the checked process
        assert "claimed conv" in record.read_text()
        assert eng.backend == "external" and eng.fallback_reason is None
        check = eng.self_check
        assert check is not None and check.passed, check
        assert check.images == len(GOLDEN) and check.cpu >= 10, check  # not a vacuous check
        assert check.agreement >= 0.99, check
    finally:
        eng.close()


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_a_corrupting_delegate_is_caught_and_the_cpu_takes_over(
        corrupt: str, recording_delegate: Path, tmp_path: Path) -> None:
    record = tmp_path / "rec.txt"
    eng = open_engine(DEFAULT_MODEL, _engine(recording_delegate, record, corrupt=corrupt))
    try:
        assert "claimed conv" in record.read_text()
        assert eng.backend == "cpu"
        check = eng.self_check
        assert check is not None and not check.passed, check
        assert check.agreement < 0.9, check
        assert eng.fallback_reason is not None
        assert eng.fallback_reason.startswith("self-check: the external backend disagrees "
                                              "with the CPU"), eng.fallback_reason
        # the fallback detects like the CPU does
        img = golden_images()[0]
        from edged.engine.detector import DetectParams

        assert len(eng.detector.detect(img, DetectParams())) >= 3
    finally:
        eng.close()


def test_require_accelerator_refuses_a_corrupting_delegate(recording_delegate: Path,
                                                          tmp_path: Path) -> None:
    cfg = EngineConfig(delegate=str(recording_delegate), require_accelerator=True,
                       delegate_options={"conv": "last", "corrupt": "zeros"})
    with pytest.raises(AcceleratorUnavailable, match="self-check"):
        open_engine(DEFAULT_MODEL, cfg)
    proc = run_edged("detect", str(GOLDEN_DIR / "dog.jpg"), "--delegate",
                     str(recording_delegate), "--delegate-option", "conv=last",
                     "--delegate-option", "corrupt=shift", "--require-accelerator")
    assert proc.returncode == 3
    assert "self-check: the external backend disagrees with the CPU" in one_line_error(proc)


def test_self_check_off_trusts_the_delegate(recording_delegate: Path, tmp_path: Path) -> None:
    cfg = EngineConfig(delegate=str(recording_delegate), self_check=False,
                       delegate_options={"conv": "last", "corrupt": "zeros"})
    eng = open_engine(DEFAULT_MODEL, cfg)
    try:
        assert eng.backend == "external" and eng.self_check is None
    finally:
        eng.close()


def test_the_status_says_why_and_how_much_they_agree(recording_delegate: Path, tmp_path: Path,
                                                     speed: timing.Speed) -> None:
    pub = f"tcp://127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path / "edged.yaml", camera={"loop": True, "fps_limit": 2},
                       events={"enabled": False},
                       publish={"endpoints": [pub], "status_interval_s": 0.2},
                       inference={"delegate": str(recording_delegate),
                                  "delegate_options": {"conv": "last", "corrupt": "shift"}})
    with Daemon(tmp_path, cfg) as d, Listener(pub, topics=("process",)) as sub:
        _, status, _ = sub.wait_until(lambda m: m[1]["state"] == "running",
                                      speed.start_deadline(base_s=2.0), "process/ running")
        code, _ = d.stop()
        assert code == 0, d.stderr[-2000:]
    assert status["backend"] == "cpu"
    assert status["fallback_reason"].startswith("self-check: the external backend disagrees")
    check = status["self_check"]
    assert check["passed"] is False and check["agreement"] < 0.9 and check["images"] == 3
    assert "self-check: external backend DISAGREES with the CPU" in d.stderr


def test_nothing_to_compare_is_inconclusive_not_passed(recording_delegate: Path,
                                                       tmp_path: Path) -> None:
    """Photographs without the model's objects prove nothing: the accelerator is used with the
    check marked inconclusive, unless it sees what the CPU does not (the zeroed head's 300
    boxes are evidence enough)."""
    import cv2
    import numpy as np

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 400, 3), 90, np.uint8))
    eng = open_engine(DEFAULT_MODEL, EngineConfig(
        delegate=str(recording_delegate), delegate_options={"conv": "last"},
        self_check_images=(blank,)))
    try:
        assert eng.backend == "external" and eng.self_check is not None
        assert eng.self_check.passed is None and eng.self_check.cpu == 0, eng.self_check
    finally:
        eng.close()
    eng = open_engine(DEFAULT_MODEL, EngineConfig(
        delegate=str(recording_delegate), delegate_options={"conv": "last", "corrupt": "zeros"},
        self_check_images=(blank,)))
    try:
        assert eng.backend == "cpu" and eng.self_check is not None
        assert eng.self_check.passed is False and eng.self_check.accelerator > 10
    finally:
        eng.close()


def test_sigterm_ends_a_start_hung_in_the_self_check(recording_delegate: Path, tmp_path: Path,
                                                    speed: timing.Speed) -> None:
    """The warm-up invoke passes, the self-check's first blocks in the delegate (a wedged NPU):
    SIGTERM still ends the process at once, as in a hung warm-up."""
    import signal
    import time

    cfg = write_config(tmp_path / "edged.yaml", camera={"loop": True},
                       events={"enabled": False},
                       publish={"endpoints": [f"tcp://127.0.0.1:{free_port()}"]},
                       inference={"delegate": str(recording_delegate), "probe_delegate": False,
                                  "delegate_options": {"hang_after": "1"}})
    with Daemon(tmp_path, cfg) as d:
        d.wait_stderr("invoke 2 blocks forever", speed.start_deadline(base_s=2.0))
        time.sleep(0.5)  # well inside the blocked invoke
        code, took = d.stop()
    assert code == -signal.SIGTERM and took < 2.0, (code, took, d.stderr[-2000:])


RECHECK_H = 0.0005  # 1.8 s


def _going_bad(tmp_path: Path, delegate: Path, **inference: object) -> Path:
    """A delegate honest for the warm-up and the check at start (4 invokes), corrupt after:
    an NPU going bad while running, found by the periodic self-check."""
    return write_config(
        tmp_path / "edged.yaml", camera={"loop": True, "fps_limit": 5},
        events={"enabled": False},
        publish={"endpoints": [f"tcp://127.0.0.1:{free_port()}"], "status_interval_s": 0.2},
        inference={"delegate": str(delegate), "self_check_interval_h": RECHECK_H,
                   "delegate_options": {"conv": "last", "corrupt": "shift",
                                        "corrupt_after": "4"}, **inference})


def test_the_periodic_check_moves_a_delegate_gone_bad_to_the_cpu(
        recording_delegate: Path, tmp_path: Path, speed: timing.Speed) -> None:
    import yaml

    cfg = _going_bad(tmp_path, recording_delegate)
    pub = yaml.safe_load(cfg.read_text())["publish"]["endpoints"][0]
    with Daemon(tmp_path, cfg) as d, Listener(pub, topics=("process",)) as sub:
        _, first, _ = sub.wait_until(lambda m: m[1]["state"] == "running",
                                     speed.start_deadline(base_s=2.0), "process/ running")
        _, moved, _ = sub.wait_until(
            lambda m: m[1]["backend"] == "cpu",
            speed.deadline(n_frames=3 * 2 * 2, base_s=2 * RECHECK_H * 3600), "the move to the CPU")
        code, _ = d.stop()
        assert code == 0, d.stderr[-2000:]
    assert first["backend"] == "external" and first["self_check"]["passed"] is True
    assert moved["self_check"]["passed"] is False and moved["self_check"]["agreement"] < 0.9
    assert moved["fallback_reason"].startswith("self-check: the external backend disagrees")
    assert "moving inference to the CPU: self-check" in d.stderr
    assert "Traceback" not in d.stderr


def test_the_periodic_check_stops_with_exit_3_when_the_accelerator_is_required(
        recording_delegate: Path, tmp_path: Path, speed: timing.Speed) -> None:
    cfg = _going_bad(tmp_path, recording_delegate, require_accelerator=True)
    with Daemon(tmp_path, cfg) as d:
        code = d.proc.wait(speed.start_deadline(n_frames=12, base_s=2 * RECHECK_H * 3600 + 2))
        assert code == 3, d.stderr[-2000:]
    assert "inference stopped: accelerator required but unusable: self-check" in d.stderr
    assert "Traceback" not in d.stderr
