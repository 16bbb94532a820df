"""Hostile and careless input to the one-shot commands (issue 10): `detect --annotate`, `bench`,
`eval`, `export`, `sub`. Each case failed before its fix; each must give one bounded line on
stderr and exit 2 (never `internal error` or a traceback), and never touch a file it was not
asked to write.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.errors import EXIT_USAGE
from edged.export.darknet import parse_cfg
from edged.media import SAMPLE_CLIP
from tests.conftest import DATA, REPO, one_line_error, run_edged
from tests.darknet_util import write_random_weights
from tests.test_client import GOOD
from tests.test_hostile import STATUS, _png, _publisher


def _frame(width: int = 320, height: int = 180) -> np.ndarray:
    """A real frame of the bundled clip (a bird in it), scaled down: small files, fast runs."""
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 130)
    ok, frame = cap.read()
    cap.release()
    assert ok
    out: np.ndarray = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    return out


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), _frame())
    return path


def _video(path: Path, frames: int = 2) -> Path:
    frame = _frame()
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25,
                        (frame.shape[1], frame.shape[0]))
    for _ in range(frames):
        w.write(frame)
    w.release()
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, no `internal error`: the error line(s) of a run."""
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return "\n".join(ln for ln in proc.stderr.splitlines() if ln.startswith("edged: error:"))


# --- F11: detect --annotate ------------------------------------------------------------------


def test_annotate_never_replaces_an_input(tmp_path: Path) -> None:
    """`detect photos/eagle.jpg --annotate photos/` replaced the user's photo with its
    annotated copy, rc 0. Now that source is refused (the others still run)."""
    photo = _image(tmp_path / "photos" / "eagle.jpg")
    other = _image(tmp_path / "elsewhere" / "bird.png")
    before = _sha(photo)
    proc = run_edged("detect", str(photo), str(other), "--annotate", str(photo.parent))
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert str(photo) in line and "would replace an input file" in line
    assert _sha(photo) == before
    assert proc.stdout.startswith(f"{other}: ")  # the batch went on
    assert cv2.imread(str(photo.parent / "bird.jpg")) is not None


def test_annotate_replaces_planted_symlinks_and_keeps_equal_names_apart(tmp_path: Path) -> None:
    """Outputs were written through a symlink planted at their path (a text file became a
    JPEG), and a/x.jpg and b/x.png both wrote out/x.jpg."""
    a = _image(tmp_path / "a" / "x.jpg")
    b = _image(tmp_path / "b" / "x.png")
    clip = _video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    out.mkdir()
    targets = {}
    for name in ("x.jpg", "clip_annotated.mp4"):
        target = tmp_path / f"precious-{name}.txt"
        target.write_bytes(b"precious data\n")
        targets[target] = target.read_bytes()
        (out / name).symlink_to(target)
    proc = run_edged("detect", str(a), str(b), str(clip), "--annotate", str(out))
    assert proc.returncode == 0, proc.stderr
    for target, text in targets.items():
        assert target.read_bytes() == text, f"{target} was written through a symlink"
    for name in ("x.jpg", "x-1.jpg", "clip_annotated.mp4"):
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert cv2.imread(str(out / "x.jpg")).shape == (180, 320, 3)
    assert cv2.imread(str(out / "x-1.jpg")).shape == (180, 320, 3)
    cap = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    cap.release()
    assert sorted(p.name for p in out.iterdir()) == ["clip_annotated.mp4", "x-1.jpg", "x.jpg"]
    assert f"annotated {b}: {out / 'x-1.jpg'}" in proc.stderr  # where it went is said


def test_annotate_dir_that_is_a_file(tmp_path: Path) -> None:
    """`--annotate FILE`: `internal error: FileExistsError`, rc 1."""
    photo = _image(tmp_path / "eagle.jpg")
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("keep me\n")
    proc = run_edged("detect", str(photo), "--annotate", str(not_a_dir))
    assert f"--annotate {not_a_dir}" in _clean_failure(proc)
    assert not_a_dir.read_text() == "keep me\n"


# --- F12: the pixel bound and OpenCV's errors in every command --------------------------------


def _coco(images: list[dict[str, object]]) -> dict[str, object]:
    return {"images": images,
            "annotations": [{"id": 1, "image_id": 1, "category_id": 16, "area": 20000,
                             "bbox": [80, 10, 170, 150], "iscrowd": 0}],
            "categories": [{"id": 16, "name": "bird"}]}


@pytest.mark.parametrize("command", ["bench", "eval"])
@pytest.mark.parametrize("kind", ["claims-60000x60000", "is-12000x12000"])
def test_bench_and_eval_refuse_images_above_the_pixel_bound(command: str, kind: str,
                                                            tmp_path: Path) -> None:
    """`detect` refused these since #8; `bench --image` and `eval` decoded the real one whole
    (20000x20000: 2.4 GB) and died with `internal error: error: OpenCV...` on the liar."""
    img = (_png(tmp_path / "big.png", 60000, 60000, rows=2) if kind.startswith("claims")
           else _png(tmp_path / "big.png", 12000, 12000))
    if command == "bench":
        proc = run_edged("bench", "--image", str(img), "--runs", "1")
    else:
        ann = tmp_path / "ann.json"
        ann.write_text(json.dumps(_coco([{"id": 1, "file_name": img.name}])))
        proc = run_edged("eval", "--images", str(tmp_path), "--annotations", str(ann))
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert str(img) in line and "image too large to decode" in line


def test_video_frames_are_held_to_the_image_bound(tmp_path: Path) -> None:
    """OPENCV_IO_MAX_IMAGE_PIXELS bounds imread only: a 16000x16000 MJPEG took 2.68 GB in
    `detect`, and `export --calib` kept 16 such frames. Videos now obey the same bound as
    images (shown with a lowered bound: the user's own setting wins over edged's)."""
    small = _image(tmp_path / "small.jpg")  # 320x180 = 57600 pixels
    clip = _video(tmp_path / "clip.mp4")
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "50000"}
    proc = subprocess.run([sys.executable, "-m", "edged", "detect", str(clip), str(small)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
                          check=False)
    assert _clean_failure(proc) == (f"edged: error: {clip}: video frames too large to decode "
                                    "(320x180)\n"
                                    f"edged: error: {small}: image too large to decode")
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = "100000"
    proc = subprocess.run([sys.executable, "-m", "edged", "detect", str(clip), str(small)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3


def _tiny_export(tmp: Path) -> list[str]:
    weights = tmp / "net.weights"
    write_random_weights(weights, parse_cfg(DATA / "tiny-test.cfg"), seed=1)
    return ["export", "--cfg", str(DATA / "tiny-test.cfg"), "--weights", str(weights),
            "--names", str(DATA / "tiny-test.names"), "--out", str(tmp / "out")]


def test_export_calibration_skips_refused_images_and_videos(tmp_path: Path) -> None:
    """`export --calib liar.png`: `internal error: error: OpenCV...`, rc 1, though the README
    says unreadable files are skipped with a warning; videos had no pixel bound."""
    liar = _png(tmp_path / "liar.png", 60000, 60000, rows=2)
    clip = _video(tmp_path / "clip.mp4")
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "50000"}
    proc = subprocess.run([sys.executable, "-m", "edged", *_tiny_export(tmp_path), "--calib",
                           str(liar), str(clip)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env, check=False)
    assert "no readable calibration images" in _clean_failure(proc)
    assert f"skipping {liar}: image too large to decode" in proc.stderr
    assert f"skipping {clip}: video frames too large to decode (320x180)" in proc.stderr


EVAL_GOOD = _coco([{"id": 1, "file_name": "bird.jpg"}])
MALFORMED_COCO = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="nested-100k"),
    pytest.param(b"\xff\xfe{}", "not UTF-8", id="non-utf8"),
    pytest.param({**EVAL_GOOD, "categories": [{"id": 16}]}, "categories[0] has no 'name'",
                 id="category-without-name"),
    pytest.param({**EVAL_GOOD, "categories": 5}, "'categories' must be a list",
                 id="categories-not-a-list"),
    pytest.param({**EVAL_GOOD, "images": [{"id": 1}]}, "images[0] has no 'file_name'",
                 id="image-without-file_name"),
    pytest.param({**EVAL_GOOD, "categories": [{"id": "x", "name": "bird"}]},
                 "categories[0].id is 'x'", id="category-id-string"),
    pytest.param({**EVAL_GOOD, "annotations": [{"id": 1, "image_id": 1, "category_id": 16,
                                                "area": 1, "iscrowd": 0, "bbox": [1, 2]}]},
                 "annotations[0].bbox", id="bbox-of-two"),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED_COCO)
def test_eval_malformed_annotations(content: object, message: str, tmp_path: Path) -> None:
    """Each was `internal error` (RecursionError, UnicodeDecodeError, KeyError, TypeError,
    ValueError) with rc 1."""
    _image(tmp_path / "bird.jpg")
    ann = tmp_path / "ann.json"
    ann.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    proc = run_edged("eval", "--images", str(tmp_path), "--annotations", str(ann))
    line = one_line_error(proc)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert str(ann) in line and message in line and len(line) < 300


# --- F16: command-line numbers --------------------------------------------------------------


SUB = ["sub", "tcp://127.0.0.1:9"]
EXPORT = ["export", "--cfg", "c", "--weights", "w", "--names", "n", "--out", "o"]


@pytest.mark.parametrize(("args", "option"), [
    ([*SUB, "--timeout", "inf"], "--timeout"),
    ([*SUB, "--timeout", "1e308"], "--timeout"),
    ([*SUB, "--timeout", "nan"], "--timeout"),
    ([*SUB, "--timeout", "-1"], "--timeout"),
    ([*SUB, "--count", "-5", "--timeout", "1"], "--count"),
    (["detect", "x.jpg", "--threads", "100000"], "--threads"),
    (["detect", "x.jpg", "--threads", "0"], "--threads"),
    (["detect", "x.jpg", "--max-detections", "-1"], "--max-detections"),
    (["detect", "x.jpg", "--max-detections", "0"], "--max-detections"),
    (["bench", "--threads", "5000"], "--threads"),
    ([*EXPORT, "--threads", "0"], "--threads"),
], ids=lambda a: " ".join(a[:1] + a[-2:]) if isinstance(a, list) else "")
def test_cli_numbers_are_bounded(args: list[str], option: str) -> None:
    """`sub --timeout inf`: `internal error: OverflowError`; nan and -1 waited forever;
    `--max-detections -1` silently found nothing; `--threads 100000` blamed the model."""
    proc = run_edged(*args, timeout=60)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    line = one_line_error(proc)
    assert f"argument {option}: must be" in line and " in [" in line, line


# --- F17: what a publisher sends is not a terminal control sequence ---------------------------


def test_sub_escapes_control_characters() -> None:
    """A det label `bird\\x1b]0;pwned\\x07\\x1b[2J` set the terminal title and cleared the
    screen: topic, labels and the fallback reason were printed raw."""
    evil = "\x1b]0;pwned\x07\x1b[2J\r"
    first = GOOD["detections"][0]  # type: ignore[index]
    # (a message goes on the topic of its camera: the topic carries the camera's characters)
    det = {**GOOD, "camera": "c" + evil, "detections": [{**first, "label": "bird" + evil}]}
    status = {**STATUS, "camera": "c" + evil, "fallback_reason": "npu" + evil}
    with _publisher() as (pub, ep):
        proc = subprocess.Popen([sys.executable, "-m", "edged", "sub", ep, "--count", "4"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                pub.send_multipart([f"status/c{evil}/".encode(), json.dumps(status).encode()])
                pub.send_multipart([f"det/c{evil}/".encode(), json.dumps(det).encode()])
                time.sleep(0.05)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert not any(c in out for c in "\x1b\x07\r"), repr(out)
    assert len(out.splitlines()) == 4
    assert r"bird\x1b]0;pwned\x07\x1b[2J\r 0.50" in out
    assert r"(fallback: npu\x1b]0;pwned\x07\x1b[2J\r)" in out
    assert r"det/c\x1b]0;pwned" in out and r"status/c\x1b]0;pwned" in out


# --- F18: export inputs ---------------------------------------------------------------------


def _export_capped(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`edged ARGS` with a 1 GiB address-space cap: an unbounded read ends in MemoryError."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-m", "edged", *args, "--float-only"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          preexec_fn=cap, check=False)


@pytest.mark.parametrize(("option", "message"), [
    ("--cfg", "cfg /dev/zero is not a regular file"),
    ("--weights", "weights /dev/zero is not a regular file"),
    ("--names", "names file /dev/zero is not a regular file"),
])
def test_export_refuses_endless_inputs(option: str, message: str, tmp_path: Path) -> None:
    """`--cfg|--weights|--names /dev/zero` each read until MemoryError (2.3 GB at a 3 GB cap;
    without one, until the OOM killer)."""
    args = _tiny_export(tmp_path)
    args[args.index(option) + 1] = "/dev/zero"
    proc = _export_capped(args)
    assert message in _clean_failure(proc)


def test_export_checks_the_weights_size_before_reading(tmp_path: Path) -> None:
    """A 3 GB (sparse) weights file was read whole before its size was compared."""
    args = _tiny_export(tmp_path)
    weights = Path(args[args.index("--weights") + 1])
    with weights.open("r+b") as f:
        f.truncate(3 << 30)
    proc = _export_capped(args)
    line = _clean_failure(proc)
    assert "bytes too long for tiny-test.cfg" in line


def test_export_names_not_utf8(tmp_path: Path) -> None:
    """`internal error: UnicodeDecodeError`, rc 1."""
    names = tmp_path / "bad.names"
    names.write_bytes(b"pig\xffeon\nsparrow\n")
    args = _tiny_export(tmp_path)
    args[args.index("--names") + 1] = str(names)
    line = _clean_failure(run_edged(*args, "--float-only"))
    assert f"{names}: not UTF-8 text (byte 0xff on line 1)" in line


def test_export_cfg_error_does_not_echo_a_long_line(tmp_path: Path) -> None:
    """A cfg line of 5 MB without `=` came back as a 5 MB "one-line" error (and a cfg of any
    size was read whole)."""
    cfg = tmp_path / "long.cfg"
    cfg.write_text((DATA / "tiny-test.cfg").read_text() + "\n" + "x" * 500_000 + "\n")
    args = _tiny_export(tmp_path)
    args[args.index("--cfg") + 1] = str(cfg)
    proc = run_edged(*args, "--float-only")
    line = _clean_failure(proc)
    assert "expected 'key=value', got 'xxx" in line and len(proc.stderr) < 1000
    cfg.write_text((DATA / "tiny-test.cfg").read_text() + "#" * (2 << 20))
    line = _clean_failure(run_edged(*args, "--float-only"))
    assert f"{cfg}: larger than 1024 KiB" in line


def test_export_replaces_a_planted_symlink_not_its_target(tmp_path: Path) -> None:
    """`export --out DIR` wrote the model through a symlink planted at its output path."""
    args = _tiny_export(tmp_path)
    out = Path(args[args.index("--out") + 1])
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_bytes(b"precious data\n")
    (out / "tiny-test-96_float32.tflite").symlink_to(target)
    proc = run_edged(*args, "--float-only", "--name", "tiny-test-96")
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == b"precious data\n"
    model = out / "tiny-test-96_float32.tflite"
    assert not model.is_symlink() and model.read_bytes()[4:8] == b"TFL3"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-test-96.yaml",
                                                     "tiny-test-96_float32.tflite"]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--name", "../escaped", "--name must be a plain file name"),
    ("--out", "a-file", "--out {}: not a directory"),
])
def test_export_output_names_stay_in_the_out_dir(option: str, value: str, message: str,
                                                 tmp_path: Path) -> None:
    """`--name ../x` wrote the models outside --out; `--out FILE` was `internal error:
    FileExistsError` after the whole conversion."""
    args = [*_tiny_export(tmp_path), "--float-only"]
    if option == "--out":
        value = str(tmp_path / value)
        Path(value).write_text("keep me\n")
        args[args.index("--out") + 1] = value
    else:
        args += [option, value]
    line = _clean_failure(run_edged(*args))
    assert message.format(value) in line
    assert list(tmp_path.glob("escaped*")) == []


@pytest.mark.parametrize("value", [float("nan"), -1.0], ids=["nan-bias", "negative-variance"])
def test_export_refuses_weights_that_are_not_finite(value: float, tmp_path: Path) -> None:
    """NaN in the weights, or a batch-norm variance below zero, gave a NaN float model (rc 0)
    and a SIGSEGV inside TFLite's int8 calibration."""
    args = _tiny_export(tmp_path)
    weights = Path(args[args.index("--weights") + 1])
    net = parse_cfg(DATA / "tiny-test.cfg")
    first = net.convs[0]
    assert first.batch_normalize
    blob = bytearray(weights.read_bytes())
    header = len(blob) - 4 * sum(c.n_params for c in net.convs)
    # darknet order with batch norm: biases, scales, means, variances, kernel
    at = header + (0 if value != value else 3 * first.filters) * 4
    blob[at:at + 4] = np.float32(value).tobytes()
    weights.write_bytes(bytes(blob))
    line = _clean_failure(run_edged(*args, "--float-only"))
    assert "layer 0 (convolutional" in line and "not finite" in line
