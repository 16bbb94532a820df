"""Detection metrics: COCO-style AP at one IoU threshold (101-point interpolation). Pure numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edged.core.nms import iou_matrix
from edged.core.types import Detections

_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def average_precision(ground_truth: Sequence[Detections], predictions: Sequence[Detections],
                      iou_threshold: float = 0.5) -> tuple[float, dict[int, float]]:
    """mAP over the classes present in ``ground_truth``, and the per-class AP.

    ``ground_truth[i]`` and ``predictions[i]`` are the same image; ground-truth scores are
    ignored. Each prediction (highest score first) matches the unmatched ground-truth box of its
    class with the highest IoU >= ``iou_threshold``, as pycocotools does.
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images, {len(predictions)} predicted")
    classes = sorted({int(c) for g in ground_truth for c in g.class_ids})
    per_class: dict[int, float] = {}
    for cls in classes:
        n_gt = 0
        records: list[tuple[float, bool]] = []
        for gt, pred in zip(ground_truth, predictions, strict=True):
            g = gt.boxes[gt.class_ids == cls]
            n_gt += len(g)
            pm = pred.class_ids == cls
            pb, ps = pred.boxes[pm], pred.scores[pm]
            order = np.argsort(-ps, kind="stable")
            matched = np.zeros(len(g), bool)
            ious = iou_matrix(pb[order], g) if len(g) and len(pb) else None
            for k, j in enumerate(order):
                hit = False
                if ious is not None:
                    cand = np.where(matched, -1.0, ious[k])
                    best = int(np.argmax(cand))
                    if cand[best] >= iou_threshold:
                        matched[best] = True
                        hit = True
                records.append((float(ps[j]), hit))
        per_class[cls] = _ap(records, n_gt)
    m = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return m, per_class


def _ap(records: list[tuple[float, bool]], n_gt: int) -> float:
    if n_gt == 0:
        return float("nan")
    if not records:
        return 0.0
    records.sort(key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in records], dtype=np.float64)
    precision = tp / np.arange(1, len(records) + 1)
    recall = tp / n_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)
    return float(sampled.mean())
