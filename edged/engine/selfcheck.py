"""Does the accelerator compute what the CPU computes? NPU delegates are known to return
silently wrong YOLO outputs for some models and BSPs (all-zero boxes from the VX delegate on
i.MX 8M Plus, tflite-vx-delegate#189; wrong yolov3/v4-tiny outputs, #35). Nothing else checks.

After warm-up the bundled golden photographs (edged.media.GOLDEN: 19 objects of 8 classes, small
and large, so every head of a YOLO model answers) go through the accelerator and through a CPU
interpreter of the same model. Their detections are matched one to one: same class, IoU >= 0.8,
scores within 0.1 (NPU int8 arithmetic is not bit-exact with the CPU's). The agreement is
matched / (matched + unmatched), where a detection the other side lacks counts only if its score
is at least ``CONF + SCORE_TOL`` (a box at 0.11 on one side and 0.09 on the other is rounding,
not a broken delegate). A check where neither side finds ``MIN_EVIDENCE`` such objects proves
nothing (a model of other classes than the photographs show): it is inconclusive, not
passed; ``inference.self_check_images`` gives it photographs of the model's own classes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edged.core.types import Detections
from edged.engine.detector import Detector, DetectParams
from edged.errors import ModelError
from edged.media import GOLDEN, GOLDEN_DIR

CONF = 0.1  # below the usual thresholds: more boxes to compare
MIN_IOU = 0.8
SCORE_TOL = 0.1
PARAMS = DetectParams(conf_threshold=CONF)  # NMS and the rest: the configuration's defaults
MIN_EVIDENCE = 3  # detections scoring >= CONF + SCORE_TOL on one side, all images


@dataclass(frozen=True)
class SelfCheck:
    agreement: float  # matched / (matched + unmatched); 1.0 when neither found anything
    matched: int
    unmatched: int
    accelerator: int  # detections found by the accelerator, all images
    cpu: int  # ... and by the CPU
    images: int
    ms: float  # the whole check: CPU interpreter built, every image on both
    passed: bool | None  # None: inconclusive (too few objects found to compare)


def golden_images(paths: Sequence[Path] | None = None) -> list[np.ndarray]:
    """The self-check's photographs (default: the bundled ones), decoded (BGR). ModelError if
    one is missing or unreadable."""
    out = []
    for path in paths or [GOLDEN_DIR / name for name in GOLDEN]:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ModelError(f"self-check image {path} missing or unreadable (check "
                             "inference.self_check_images, or set inference.self_check: false)")
        out.append(img)
    return out


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union: np.ndarray = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def compare(acc: Detections, cpu: Detections) -> tuple[int, int]:
    """(matched, unmatched): one to one, strongest CPU detections first."""
    free = np.ones(len(acc), bool)
    matched = unmatched = 0
    for i in np.argsort(-cpu.scores, kind="stable"):
        ok = free & (acc.class_ids == cpu.class_ids[i]) & \
            (np.abs(acc.scores - cpu.scores[i]) <= SCORE_TOL)
        if len(acc) and ok.any():
            iou = np.where(ok, _iou(cpu.boxes[i], acc.boxes), -1.0)
            j = int(np.argmax(iou))
            if iou[j] >= MIN_IOU:
                free[j] = False
                matched += 1
                continue
        unmatched += int(cpu.scores[i] >= CONF + SCORE_TOL)
    unmatched += int(np.count_nonzero(free & (acc.scores >= CONF + SCORE_TOL)))
    return matched, unmatched


def run(acc: Detector, cpu: Detector, min_agreement: float,
        images: list[np.ndarray] | None = None) -> SelfCheck:
    """Every golden image through both detectors; ``acc`` is left ready for frames."""
    t0 = time.perf_counter()
    images = golden_images() if images is None else images
    matched = unmatched = n_acc = n_cpu = evidence = 0
    for img in images:
        a, c = acc.detect(img, PARAMS), cpu.detect(img, PARAMS)
        m, u = compare(a, c)
        matched, unmatched = matched + m, unmatched + u
        n_acc, n_cpu = n_acc + len(a), n_cpu + len(c)
        # objects either side is sure of (an accelerator seeing 300 where the CPU sees none
        # is evidence too)
        evidence += max(int(np.count_nonzero(c.scores >= CONF + SCORE_TOL)),
                        int(np.count_nonzero(a.scores >= CONF + SCORE_TOL)))
    total = matched + unmatched
    agreement = matched / total if total else 1.0
    passed = None if evidence < MIN_EVIDENCE else agreement >= min_agreement
    return SelfCheck(round(agreement, 4), matched, unmatched, n_acc, n_cpu, len(images),
                     round((time.perf_counter() - t0) * 1e3, 1), passed)
