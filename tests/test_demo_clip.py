"""The bundled demo clip shows what edged says it shows: on every frame checked, the labels the
shipped int8 model reports are the labels OpenCV's darknet reference (the original yolov3-tiny
weights) reports on that frame, each of our boxes lies on a reference box of the same label, and
over the clip they are exactly ``edged.media.SAMPLE_LABELS`` (which tests elsewhere may assert)."""

from __future__ import annotations

import cv2
import numpy as np

from edged import sidecar
from edged.engine.detector import Detector, DetectParams
from edged.export.assets import Assets
from edged.media import SAMPLE_CLIP, SAMPLE_LABELS
from edged.models import DEFAULT_MODEL
from tests.test_engine import _opencv_pipeline

STEP = 5  # every 5th frame: 30 of the 150, frame 130 (`edged bench`'s frame) among them
BENCH_FRAME = 130


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    h = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = w * h
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union


def test_demo_clip_labels_are_the_references(assets: Assets) -> None:
    spec = sidecar.load(DEFAULT_MODEL)
    path = spec.variant_path("cpu")
    assert path is not None
    det = Detector(spec, path)
    cvnet = cv2.dnn.readNetFromDarknet(str(assets.cfg), str(assets.weights))
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    ours_seen: set[str] = set()
    ref_seen: set[str] = set()
    checked: list[int] = []
    bench_labels: set[str] = set()
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % STEP == 0:
            ref = _opencv_pipeline(cvnet, frame)
            ours = det.detect(frame, DetectParams(0.25, 0.45, 100))
            ref_labels = {spec.labels[c] for c in ref.class_ids}
            our_labels = {spec.labels[c] for c in ours.class_ids}
            assert our_labels == ref_labels, f"frame {index}: ours {our_labels}, ref {ref_labels}"
            for box, cls in zip(ours.boxes, ours.class_ids, strict=True):
                best = max((_iou(box, rb) for rb, rc in zip(ref.boxes, ref.class_ids, strict=True)
                            if rc == cls), default=0.0)
                assert best >= 0.5, f"frame {index}: our {spec.labels[cls]} box {box} " \
                                    f"has no reference box (best IoU {best:.2f})"
            ours_seen |= our_labels
            ref_seen |= ref_labels
            checked.append(index)
            if index == BENCH_FRAME:
                bench_labels = ref_labels
        index += 1
    cap.release()
    assert len(checked) >= 30 and BENCH_FRAME in checked, checked
    assert ref_seen == SAMPLE_LABELS, f"the reference sees {ref_seen}, edged.media says " \
                                      f"{set(SAMPLE_LABELS)}"
    assert ours_seen == SAMPLE_LABELS
    assert "bird" in bench_labels  # edged/cli.py's bench frame: "a frame with a bird in it"
