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

import numpy as np

from edged.engine.detector import Detector, DetectParams
from edged.errors import UsageError
from edged.tools.images import read_image
from edged.yamlfile import read_text, show

logger = logging.getLogger(__name__)

# instances_train2017.json is 448 MB; /dev/zero never ends.
MAX_ANNOTATIONS_BYTES = 1 << 30
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


def _load_coco(path: Path) -> dict[str, Any]:
    """The COCO instances file, checked for what pycocotools and we index (one line if not)."""
    text = read_text(path, MAX_ANNOTATIONS_BYTES, "annotations file", UsageError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except RecursionError as e:
        raise UsageError(f"{path}: nested too deeply to be a COCO instances file") from e
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise UsageError(f"{path}: not a COCO instances file (needs images, annotations "
                         "and categories)")
    fields: dict[str, dict[str, type | tuple[type, ...]]] = {
              "images": {"id": int, "file_name": str},
              "categories": {"id": int, "name": str},
              "annotations": {"id": int, "image_id": int, "category_id": int, "bbox": list,
                              "area": (int, float)}}
    for key, need in fields.items():
        items = data[key]
        if not isinstance(items, list):
            raise UsageError(f"{path}: '{key}' must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise UsageError(f"{path}: {key}[{i}] must be an object, got {show(item)}")
            for name, kind in need.items():
                if name not in item:
                    raise UsageError(f"{path}: {key}[{i}] has no '{name}'")
                v = item[name]
                if not isinstance(v, kind) or isinstance(v, bool):
                    raise UsageError(f"{path}: {key}[{i}].{name} is {show(v)}; COCO wants "
                                     f"{_KIND_NAMES.get(kind, 'a number')}")
            if key == "annotations":
                item.setdefault("iscrowd", 0)  # pycocotools needs it; COCO's default
                if item["iscrowd"] not in (0, 1):
                    raise UsageError(f"{path}: {key}[{i}].iscrowd is {show(item['iscrowd'])}; "
                                     "COCO wants 0 or 1")
            if key == "annotations" and (
                    len(item["bbox"]) != 4 or not all(isinstance(x, int | float)
                                                      and not isinstance(x, bool)
                                                      for x in item["bbox"])):
                raise UsageError(f"{path}: {key}[{i}].bbox is {show(item['bbox'])}; COCO "
                                 "wants [x, y, width, height]")
    return data


_KIND_NAMES: dict[type | tuple[type, ...], str] = {int: "an integer", str: "a string",
                                                   list: "a list"}


def evaluate(det: Detector, images_dir: Path, annotations: Path) -> EvalResult:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise UsageError("edged eval needs pycocotools: pip install 'edged[eval]'") from e
    data = _load_coco(annotations)
    cats = {_norm(c["name"]): c["id"] for c in data["categories"]}
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
        frame = read_image(path) if path.is_file() else "no such file"
        if frame is None or isinstance(frame, str):
            raise UsageError(f"cannot read image {path} (listed in {annotations.name}): "
                             f"{frame or 'not a readable image'}")
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
