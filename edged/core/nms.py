"""Non-maximum suppression: class-aware greedy IoU and DIoU (darknet's ``greedynms``).

Boxes are (N, 4) float xyxy; scores (N,); class_ids (N,). Returned indices are sorted by
descending score. The loop runs once per *kept* box; each step is vectorized over the rest.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    if a.ndim != 2 or a.shape[1] != 4 or b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) and (M, 4) xyxy, got {a.shape} and {b.shape}")
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    iou: np.ndarray = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return iou


def _overlap_one(box: np.ndarray, rest: np.ndarray, kind: str, beta: float) -> np.ndarray:
    iou: np.ndarray = iou_matrix(box[None, :], rest)[0]
    if kind == "greedy":
        return iou
    # DIoU as darknet's box_diounms: iou - (centre distance^2 / enclosing diagonal^2)^beta
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rcx, rcy = (rest[:, 0] + rest[:, 2]) / 2, (rest[:, 1] + rest[:, 3]) / 2
    ex1, ey1 = np.minimum(box[0], rest[:, 0]), np.minimum(box[1], rest[:, 1])
    ex2, ey2 = np.maximum(box[2], rest[:, 2]), np.maximum(box[3], rest[:, 3])
    c = (ex2 - ex1) ** 2 + (ey2 - ey1) ** 2
    d = (cx - rcx) ** 2 + (cy - rcy) ** 2
    term = np.where(c > 0, (d / np.where(c > 0, c, 1)) ** beta, 0.0)
    out: np.ndarray = iou - term
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        max_detections: int, kind: str, beta: float) -> np.ndarray:
    """Class-aware NMS. Returns kept indices (int64), best score first. No defaults: the
    configuration (``detection``) and the model's sidecar (``head.nms``, ``head.nms_beta``)
    own them; ``beta`` is used by ``diou`` only."""
    if kind not in ("greedy", "diou"):
        raise ValueError(f"nms kind must be 'greedy' or 'diou', got {kind!r}")
    n = scores.shape[0]
    if boxes.shape != (n, 4) or class_ids.shape != (n,):
        raise ValueError(f"nms: boxes {boxes.shape}, scores {scores.shape}, "
                         f"class_ids {class_ids.shape} disagree")
    if n == 0 or max_detections <= 0:
        return np.zeros(0, np.int64)
    # Shift each class into its own region so one pass never suppresses across classes.
    b = boxes.astype(np.float64)
    span = float(np.abs(b).max()) * 2 + 1.0
    b = b + (class_ids.astype(np.float64) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        order = rest[_overlap_one(b[i], b[rest], kind, beta) <= iou_threshold]
    return np.asarray(keep, np.int64)


def select(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
           class_thresholds: np.ndarray | None = None, allowed: np.ndarray | None = None,
           min_area: float = 0.0) -> np.ndarray:
    """Boolean mask of boxes passing the per-class score thresholds, the class allow-list and
    the minimum box area (same pixel units as ``boxes``).

    class_thresholds: (num_classes,) float, the minimum score per class id;
    allowed: (num_classes,) bool, True for classes to keep.
    """
    keep = np.ones(scores.shape[0], bool)
    if class_thresholds is not None:
        keep &= scores >= class_thresholds[class_ids]
    if allowed is not None:
        keep &= allowed[class_ids]
    if min_area > 0:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep &= area >= min_area
    return keep
