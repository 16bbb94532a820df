"""`edged eval`: COCO-style evaluation of a model on the user's own annotated images.

Protocol of the model cards: score threshold 0.001, class-aware NMS at IoU 0.45, top 100 per
image, pycocotools' ``COCOeval`` for boxes. Model labels are matched to the annotation's
categories by name (case, spaces and the usual darknet/COCO spellings folded together).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged.errors import UsageError
from edged.inference.detector import Detector, DetectParams

logger = logging.getLogger(__name__)

EVAL_PARAMS = DetectParams(conf_threshold=0.001, iou_threshold=0.45, max_detections=100)

# darknet's coco.names spelling -> COCO category name
_ALIASES = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch",
            "tvmonitor": "tv", "diningtable": "dining table", "pottedplant": "potted plant"}


def _norm(name: str) -> str:
    n = name.strip().lower()
    n = _ALIASES.get(n, n)
    return n.replace(" ", "").replace("_", "").replace("-", "")


@dataclass(frozen=True)
class EvalResult:
    images: int
    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    per_class: dict[str, float]  # AP@[.5:.95] per category present in the annotations
    unmatched_labels: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def evaluate(det: Detector, images_dir: Path, annotations: Path) -> EvalResult:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise UsageError("edged eval needs pycocotools: pip install 'edged[eval]'") from e
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read annotations {annotations}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise UsageError(f"{annotations}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise UsageError(f"{annotations}: not a COCO instances file (needs images, annotations "
                         "and categories)")
    cats = {_norm(c["name"]): int(c["id"]) for c in data["categories"]}
    label_to_cat: dict[int, int] = {}
    unmatched = []
    for i, label in enumerate(det.spec.labels):
        cat = cats.get(_norm(label))
        if cat is None:
            unmatched.append(label)
        else:
            label_to_cat[i] = cat
    if not label_to_cat:
        raise UsageError(f"{annotations}: none of the model's labels match a category name")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
    results: list[dict[str, Any]] = []
    for img in data["images"]:
        path = images_dir / img["file_name"]
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise UsageError(f"cannot read image {path} (listed in {annotations.name})")
        dets = det.detect(frame, EVAL_PARAMS)
        for box, score, cls in zip(dets.boxes.tolist(), dets.scores.tolist(),
                                   dets.class_ids.tolist(), strict=True):
            if cls in label_to_cat:
                results.append({"image_id": img["id"], "category_id": label_to_cat[cls],
                                "score": score,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if not results:
        raise UsageError("the model detected nothing of the annotated categories")
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: [T iou thresholds, R recall points, K categories, A areas, M maxDets]
    precision = ev.eval["precision"]
    per_class = {}
    names = {int(c["id"]): c["name"] for c in data["categories"]}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size and cat in {a["category_id"] for a in data["annotations"]}:
            per_class[names[cat]] = float(np.mean(p))
    s = [float(v) for v in ev.stats]
    return EvalResult(len(data["images"]), s[0], s[1], s[2], s[3], s[4], s[5], per_class,
                      tuple(unmatched))
