"""`edged detect`, `bench` and `eval` as users run them: real subprocesses, real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edged import sidecar
from edged.engine.detector import Detector, DetectParams
from edged.errors import EXIT_NO_ACCELERATOR, EXIT_USAGE
from edged.export.assets import Assets
from edged.export.darknet import parse_cfg, read_weights
from edged.media import SAMPLE_CLIP
from edged.models import DEFAULT_MODEL
from tests.conftest import DATA, fake_board, one_line_error, run_edged
from tests.darknet_util import write_random_weights

DET_KEYS = {"class_id", "label", "score", "box", "box_norm"}


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]


def test_detect_json_on_images_and_a_video(assets: Assets, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"mp4v"), 25, (1280, 720))
    for _ in range(6):
        ok, frame = cap.read()
        assert ok
        writer.write(frame)
    writer.release()
    moto = assets.holdout / "motorcycle_right.png"
    proc = run_edged("detect", str(moto), str(clip), "--json", "--annotate",
                     str(tmp_path / "ann"))
    assert proc.returncode == 0, proc.stderr
    objs = _json_lines(proc.stdout)
    assert len(objs) == 1 + 6
    first = objs[0]
    assert first["source"] == str(moto) and "frame" not in first
    assert (first["width"], first["height"]) == (741, 500)
    assert first["detections"][0]["label"] == "motorbike"
    for o in objs:
        for d in o["detections"]:
            assert set(d) == DET_KEYS
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= o["width"] and 0 <= y1 < y2 <= o["height"]
            assert d["box_norm"] == pytest.approx([x1 / o["width"], y1 / o["height"],
                                                   x2 / o["width"], y2 / o["height"]], abs=1e-3)
    assert [o["frame"] for o in objs[1:]] == list(range(6))
    drawn = cv2.imread(str(tmp_path / "ann" / "motorcycle_right.jpg"))
    assert drawn.shape == (500, 741, 3)
    assert not np.array_equal(drawn, cv2.imread(str(moto)))  # boxes were drawn
    out = cv2.VideoCapture(str(tmp_path / "ann" / "clip_annotated.mp4"))
    assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == 6


def test_detect_reports_unreadable_files_and_goes_on(assets: Assets, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = assets.holdout / "motorcycle_right.png"
    proc = run_edged("detect", str(bad), str(tmp_path / "missing.png"), str(good))
    assert proc.returncode == EXIT_USAGE
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edged: error:")]
    assert len(errors) == 2
    assert "broken.jpg" in errors[0] and "missing.png: no such file" in errors[1]
    assert proc.stdout.startswith(f"{good}: motorbike")


def _model_copy(tmp_path: Path) -> Path:
    for f in DEFAULT_MODEL.parent.iterdir():
        if f.suffix in (".yaml", ".tflite"):
            shutil.copy(f, tmp_path / f.name)
    return tmp_path / DEFAULT_MODEL.name


@pytest.mark.parametrize(("case", "message"), [
    ("missing sidecar", "cannot read model sidecar"),
    ("missing tflite", "model file not found"),
    ("corrupt tflite", "cannot load"),
    ("outputs do not fit", "do not fit the sidecar"),
    ("bad sidecar key", "head.nms"),
])
def test_bad_models(case: str, message: str, tmp_path: Path, assets: Assets) -> None:
    model = _model_copy(tmp_path)
    int8 = tmp_path / "yolov3-tiny-416_int8.tflite"
    if case == "missing sidecar":
        model = tmp_path / "nope.yaml"
    elif case == "missing tflite":
        int8.unlink()
    elif case == "corrupt tflite":
        int8.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    else:
        data = yaml.safe_load(model.read_text())
        if case == "outputs do not fit":
            data["head"]["outputs"][0]["grid"] = [15, 15]
        else:
            data["head"]["nms"] = "soft"
        model.write_text(yaml.safe_dump(data))
    proc = run_edged("detect", "--model", str(model), "--delegate", "cpu",
                     str(assets.holdout / "motorcycle_right.png"))
    assert proc.returncode == EXIT_USAGE
    line = one_line_error(proc)
    assert message in line
    if case == "outputs do not fit":
        assert "(1, 13, 13, 255)" in line and "(1, 15, 15, 255)" in line


def test_require_accelerator_exit_code(tmp_path: Path, assets: Assets) -> None:
    root = fake_board(tmp_path, "i.MX8MP")
    proc = run_edged("detect", "--sysfs-root", str(root), "--require-accelerator",
                     str(assets.holdout / "motorcycle_right.png"))
    assert proc.returncode == EXIT_NO_ACCELERATOR
    line = one_line_error(proc)
    assert "accelerator required" in line and "libvx_delegate.so" in line


def test_fallback_is_logged_once_and_detection_goes_on(tmp_path: Path, assets: Assets) -> None:
    root = fake_board(tmp_path, "i.MX93")
    proc = run_edged("detect", "--sysfs-root", str(root),
                     str(assets.holdout / "motorcycle_right.png"))
    assert proc.returncode == 0
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "libethosu_delegate.so" in warnings[0]
    assert "motorbike" in proc.stdout


def test_bench_json() -> None:
    proc = run_edged("bench", "--runs", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["backend"] == "cpu" and r["frame"] == [1280, 720] and r["detections"] >= 1
    assert r["naive_agrees"] is True
    for stage in ("preprocess", "invoke", "decode_nms", "naive_decode_nms"):
        assert 0 < r[stage]["min_ms"] <= r[stage]["median_ms"] <= r[stage]["p90_ms"]
    assert "decode_speedup_vs_naive" in r  # a figure; how much faster is for benchmarks/


def test_eval_on_coco_style_annotations(assets: Assets, tmp_path: Path,
                                        v3_export: tuple[Path, str]) -> None:
    """Annotations made from the float model's boxes; the int8 model is scored against them."""
    out, _ = v3_export
    spec = sidecar.load(DEFAULT_MODEL)
    fdet = Detector(sidecar.load(out / "yolov3-tiny-416.yaml"),
                    out / "yolov3-tiny-416_float32.tflite")
    images, anns = [], []
    files = sorted(assets.holdout.iterdir())
    for i, f in enumerate(files):
        img = cv2.imread(str(f))
        images.append({"id": i, "file_name": f.name, "width": img.shape[1],
                       "height": img.shape[0]})
        d = fdet.detect(img, DetectParams(0.3))
        for b, c in zip(d.boxes.tolist(), d.class_ids.tolist(), strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 100 + c,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
    # COCO's own spelling for two darknet names, and ids unrelated to the model's class ids
    names = {lbl: {"motorbike": "motorcycle", "aeroplane": "airplane"}.get(lbl, lbl)
             for lbl in spec.labels}
    cats = [{"id": 100 + i, "name": names[lbl]} for i, lbl in enumerate(spec.labels)]
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    proc = run_edged("eval", "--images", str(assets.holdout), "--annotations", str(ann_file),
                     "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["images"] == len(files)
    assert r["ap50"] > 0.9 and 0 < r["ap"] <= r["ap50"]
    assert "motorcycle" in r["per_class"] and r["unmatched_labels"] == []
    human = run_edged("eval", "--images", str(assets.holdout), "--annotations", str(ann_file))
    assert "AP50" in human.stdout and "motorcycle" in human.stdout


def test_eval_rejects_a_non_coco_file(tmp_path: Path, assets: Assets) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"images": []}')
    proc = run_edged("eval", "--images", str(assets.holdout), "--annotations", str(bad))
    assert proc.returncode == EXIT_USAGE
    assert "not a COCO instances file" in one_line_error(proc)


@pytest.mark.parametrize("input_type", ["float32", "uint8", "int8"])
def test_preprocess_honours_input_tensor_type(input_type: str, assets: Assets,
                                              tmp_path: Path) -> None:
    """The detector writes exactly pixels/255 in the input tensor's own type and quantization."""
    from edged.export import tfgraph
    from edged.export.pipeline import ExportRequest, export_darknet

    cfg = DATA / "tiny-test.cfg"
    net = parse_cfg(cfg)
    weights = tmp_path / "w.weights"
    write_random_weights(weights, net, seed=5)
    res = export_darknet(ExportRequest(cfg=cfg, weights=weights, names=DATA / "tiny-test.names",
                                       out_dir=tmp_path, float_only=True))
    model = res.float_path
    if input_type != "float32":
        forward = tfgraph.build_forward(net, read_weights(weights, net))
        frames = [np.random.default_rng(i).random((1, 64, 96, 3), np.float32)
                  for i in range(4)]
        model = tmp_path / f"m_{input_type}.tflite"
        model.write_bytes(tfgraph.convert(forward, True, False, lambda: ([f] for f in frames),
                                          input_type))
    det = Detector(sidecar.load(res.sidecar_path), model)
    frame = cv2.imread(str(assets.holdout / "motorcycle_right.png"))
    det.preprocess(frame)
    inp = det.interpreter.get_input_details()[0]
    got = det.interpreter.get_tensor(inp["index"])[0]
    assert got.dtype == np.dtype(input_type)
    pixels = det.pixels.astype(np.float32) / 255.0
    scale, zp = inp["quantization"]
    real = got.astype(np.float32)
    if input_type != "float32":
        real = (real - zp) * scale
    np.testing.assert_allclose(real, pixels, atol=(scale or 1e-6) / 2 + 1e-6)
