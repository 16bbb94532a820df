"""Bad input to `edged export`: one clear line, exit code 2, no traceback (real subprocesses)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.errors import EXIT_USAGE
from edged.export.assets import Assets
from edged.export.darknet import parse_cfg
from tests.conftest import DATA, one_line_error, run_edged
from tests.darknet_util import write_random_weights

TINY_CFG = (DATA / "tiny-test.cfg").read_text()


def _tiny(tmp: Path, cfg_text: str = TINY_CFG) -> list[str]:
    cfg = tmp / "net.cfg"
    cfg.write_text(cfg_text)
    weights = tmp / "net.weights"
    write_random_weights(weights, parse_cfg(DATA / "tiny-test.cfg"), seed=1)
    return ["--cfg", str(cfg), "--weights", str(weights), "--names",
            str(DATA / "tiny-test.names"), "--out", str(tmp / "out")]


def _real_weights(assets: Assets, tmp: Path, edit: Callable[[bytes], bytes]) -> list[str]:
    w = tmp / "yolov3-tiny.weights"
    w.write_bytes(edit(assets.weights.read_bytes()))
    return ["--cfg", str(assets.cfg), "--weights", str(w), "--names", str(assets.names),
            "--out", str(tmp / "out"), "--float-only"]


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_weights_too_short_names_bytes_and_layer(assets: Assets, tmp_path: Path) -> None:
    proc = run_edged("export", *_real_weights(assets, tmp_path, lambda b: b[:-1000]))
    assert proc.returncode == EXIT_USAGE
    line = one_line_error(proc)
    assert "1000 bytes too short" in line
    assert "layer 22 (convolutional, yolov3-tiny.cfg line" in line


def test_weights_truncated_early_names_the_layer(assets: Assets, tmp_path: Path) -> None:
    # 20 bytes header + layer 0 (16 biases, 3x16 BN, 16*3*3*3 weights) = 20 + 2176 bytes
    proc = run_edged("export", *_real_weights(assets, tmp_path, lambda b: b[:20 + 2176 + 100]))
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE
    assert "ends inside layer 2 (convolutional" in line


def test_weights_too_long(assets: Assets, tmp_path: Path) -> None:
    proc = run_edged("export", *_real_weights(assets, tmp_path, lambda b: b + bytes(8)))
    assert proc.returncode == EXIT_USAGE
    line = one_line_error(proc)
    assert "8 bytes too long" in line and "layer 22" in line


CFG_CASES = [
    ("unsupported layer",
     TINY_CFG.replace("[maxpool]", "[dropout]\nprobability=.5\n\n[maxpool]", 1),
     "unsupported layer type [dropout]", "[dropout]"),
    # errors inside a section cite the line of its [header]
    ("missing key", TINY_CFG.replace("filters=8\n", "", 1), "missing key 'filters'",
     "[convolutional]"),
    ("malformed int", TINY_CFG.replace("size=3\n", "size=three\n", 1),
     "'size' must be an integer, got 'three'", "[convolutional]"),
    ("malformed header", TINY_CFG.replace("[maxpool]", "[maxpool", 1), "malformed section header",
     "[maxpool"),
    ("no equals sign", TINY_CFG.replace("stride=2\n", "stride 2\n", 1), "expected 'key=value'",
     "stride 2"),
    ("missing net width", TINY_CFG.replace("width=96\n", ""), "missing key 'width'", None),
    ("unsupported activation", TINY_CFG.replace("activation=leaky", "activation=mish", 1),
     "activation 'mish' not supported", "[convolutional]"),
    ("head filters mismatch", TINY_CFG.replace("filters=21", "filters=20", 1),
     "needs 21", None),
    ("route out of range", TINY_CFG.replace("layers=-1,-3", "layers=-1,-30"),
     "layer reference -30 points outside", None),
    ("no heads", TINY_CFG.split("[yolo]")[0], "no [yolo] or [region] layer", None),
]


@pytest.mark.parametrize(("case", "text", "message", "line_marker"), CFG_CASES,
                         ids=[c[0] for c in CFG_CASES])
def test_bad_cfg(case: str, text: str, message: str, line_marker: str | None,
                 tmp_path: Path) -> None:
    args = _tiny(tmp_path, text)
    proc = run_edged("export", *args, "--float-only")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    line = one_line_error(proc)
    assert message in line
    if line_marker is not None:  # the error points at the right cfg line
        assert f"net.cfg:{_line_of(text, line_marker)}" in line


def test_names_count_mismatch(tmp_path: Path) -> None:
    args = _tiny(tmp_path)
    names = tmp_path / "three.names"
    names.write_text("a\nb\nc\n")
    args[args.index("--names") + 1] = str(names)
    line = one_line_error(run_edged("export", *args, "--float-only"))
    assert "3 labels" in line and "classes=2" in line


def test_missing_files(tmp_path: Path) -> None:
    args = _tiny(tmp_path)
    args[args.index("--cfg") + 1] = str(tmp_path / "nope.cfg")
    proc = run_edged("export", *args, "--float-only")
    assert proc.returncode == EXIT_USAGE
    assert "cannot read cfg" in one_line_error(proc) and "nope.cfg" in proc.stderr


def test_int8_without_calibration_images(tmp_path: Path) -> None:
    proc = run_edged("export", *_tiny(tmp_path))
    assert proc.returncode == EXIT_USAGE
    assert "--calib" in one_line_error(proc)


def test_unreadable_calibration_images_are_skipped(assets: Assets, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.png").write_bytes(b"not a png at all")
    (bad / "empty.jpg").write_bytes(b"")
    good = tmp_path / "good"
    good.mkdir()
    for f in sorted(assets.calib.iterdir())[:6]:
        shutil.copy(f, good / f.name)
    proc = run_edged("export", *_tiny(tmp_path), "--calib", str(bad), str(good),
                     str(tmp_path / "missing.jpg"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("garbage.png", "empty.jpg", "missing.jpg"):
        assert any("skipping" in ln and name in ln for ln in proc.stderr.splitlines()), name


def test_no_readable_calibration_images_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.png").write_bytes(b"\x89PNG broken")
    proc = run_edged("export", *_tiny(tmp_path), "--calib", str(bad))
    assert proc.returncode == EXIT_USAGE
    assert "no readable calibration images" in one_line_error(proc)
    assert "skipping" in proc.stderr
