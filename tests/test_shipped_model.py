"""The model shipped inside the package loads, detects, and agrees with a fresh float export."""

from __future__ import annotations

from pathlib import Path

import cv2

from edged import sidecar
from edged.core.metrics import average_precision
from edged.engine.detector import Detector, DetectParams
from edged.export.assets import Assets
from edged.models import DEFAULT_MODEL


def test_shipped_sidecar_and_variants() -> None:
    spec = sidecar.load(DEFAULT_MODEL)
    assert spec.name == "yolov3-tiny-416" and len(spec.labels) == 80
    assert spec.labels[14] == "bird"
    for key in ("cpu", "vx", "ethosu"):
        path = spec.variant_path(key)
        assert path is not None and path.is_file(), key
    assert spec.variants["ethosu"].endswith("_int8_vela.tflite")
    assert spec.extra["quantization"]["report"]["map50_vs_float"] >= 0.95
    assert spec.extra["source"]["weights_sha256"].startswith("dccea06f")


def test_shipped_int8_agrees_with_float(assets: Assets, v3_export: tuple[Path, str]) -> None:
    out, _ = v3_export
    spec = sidecar.load(DEFAULT_MODEL)
    shipped_path = spec.variant_path("cpu")
    assert shipped_path is not None
    shipped = Detector(spec, shipped_path)
    fresh_float = Detector(sidecar.load(out / "yolov3-tiny-416.yaml"),
                           out / "yolov3-tiny-416_float32.tflite")
    moto = cv2.imread(str(assets.holdout / "motorcycle_right.png"))
    dets = shipped.detect(moto, DetectParams())
    assert spec.labels[int(dets.class_ids[0])] == "motorbike"
    gts, preds = [], []
    for f in sorted(assets.holdout.iterdir()):
        img = cv2.imread(str(f))
        gts.append(fresh_float.detect(img, DetectParams(0.25)))
        preds.append(shipped.detect(img, DetectParams(0.01)))
    m, _ = average_precision(gts, preds)
    assert m >= 0.95
