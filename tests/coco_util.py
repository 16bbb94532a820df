"""mAP@0.5 by pycocotools: the independent referee for detection agreement."""

from __future__ import annotations

import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from edged.core.types import Detections


def coco_map50(gts: list[Detections], preds: list[Detections]) -> float:
    """mAP@0.5 of ``preds`` taking ``gts`` as ground truth, per image pairs."""
    images, anns, dets = [], [], []
    for i, (g, p) in enumerate(zip(gts, preds, strict=True)):
        images.append({"id": i, "width": 10000, "height": 10000})
        for b, c in zip(g.boxes.tolist(), g.class_ids.tolist(), strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(p.boxes.tolist(), p.scores.tolist(), p.class_ids.tolist(),
                           strict=True):
            dets.append({"image_id": i, "category_id": c, "score": s,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in range(80)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets) if dets else COCO(), "bbox")
        ev.params.catIds = sorted({a["category_id"] for a in anns})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])
