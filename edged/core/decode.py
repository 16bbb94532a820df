"""YOLO head decoders: raw head tensor in, candidate boxes out. Pure, vectorized numpy.

Every decoder returns :class:`~edged.core.types.Detections` with xyxy boxes in network-input pixels,
one box per anchor/cell (the best class), score = objectness x class probability, filtered by
``conf_threshold``. Quantized tensors are thresholded on objectness in the integer domain and
only the survivors are dequantized.
"""

from __future__ import annotations

import math

import numpy as np

from edged.core.types import Detections

Quant = tuple[float, int]  # (scale, zero_point) of a quantized tensor


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


def _grid_view(raw: np.ndarray, n_anchors: int,
               grid: tuple[int, int] | None = None) -> tuple[np.ndarray, int, int, int]:
    """(1, H, W, A*(5+C)), (H, W, A*(5+C)) or, with ``grid``, the flattened (1, H*W, A*(5+C))
    -> ((H*W*A, 5+C) view, H, W, C)."""
    if raw.ndim == 4 and raw.shape[0] == 1:
        raw = raw[0]
    elif grid is not None and raw.ndim == 3 and raw.shape[:2] == (1, grid[0] * grid[1]):
        raw = raw.reshape(grid[0], grid[1], raw.shape[2])
    if raw.ndim != 3 or raw.shape[2] % n_anchors or raw.shape[2] // n_anchors < 6:
        raise ValueError(
            f"head tensor must be (H, W, A*(5+C)) with A={n_anchors}, got {raw.shape}")
    h, w, ch = raw.shape
    per = ch // n_anchors
    return raw.reshape(h * w * n_anchors, per), h, w, per - 5


def _objectness_survivors(rows: np.ndarray, conf_threshold: float,
                          quant: Quant | None) -> np.ndarray:
    """Indices of rows whose objectness alone can reach ``conf_threshold``."""
    logit = _logit(conf_threshold)
    obj = rows[:, 4]
    if quant is None:
        return np.flatnonzero(obj >= logit)
    scale, zp = quant
    q_min = math.ceil(zp + logit / scale)
    return np.flatnonzero(obj.astype(np.int32) >= q_min)


def _dequant(rows: np.ndarray, quant: Quant | None) -> np.ndarray:
    if quant is None:
        return rows.astype(np.float32, copy=False)
    scale, zp = quant
    out: np.ndarray = (rows.astype(np.float32) - np.float32(zp)) * np.float32(scale)
    return out


def decode_yolo(raw: np.ndarray, anchors_px: np.ndarray, input_wh: tuple[int, int],
                conf_threshold: float, scale_x_y: float = 1.0,
                quant: Quant | None = None) -> Detections:
    """Decode one darknet ``[yolo]`` head (v3-tiny, v4-tiny).

    raw: (1, H, W, A*(5+C)) logits, float32 or int8/uint8 with ``quant``;
    anchors_px: (A, 2) anchor (w, h) in network-input pixels for this head's mask.
    x = (col + sigmoid(tx)*s - (s-1)/2) / W, w = exp(tw) * anchor_w, score = sig(obj)*sig(cls).
    """
    return _decode_anchored(raw, np.asarray(anchors_px, np.float32).reshape(-1, 2), False,
                            input_wh, conf_threshold, scale_x_y, quant, None, softmax=False)


def decode_region(raw: np.ndarray, anchors_grid: np.ndarray, input_wh: tuple[int, int],
                  conf_threshold: float, quant: Quant | None = None,
                  grid: tuple[int, int] | None = None) -> Detections:
    """Decode a darknet ``[region]`` head (Tiny YOLOv2).

    raw: (1, H, W, A*(5+C)), or ST's flattened (1, H*W, A*(5+C)) with ``grid=(H, W)``;
    anchors_grid: (A, 2) in grid cells.
    x = (col + sigmoid(tx)) / W, w = exp(tw) * anchor_w / W, score = sig(obj) * softmax(cls).
    """
    return _decode_anchored(raw, np.asarray(anchors_grid, np.float32).reshape(-1, 2), True,
                            input_wh, conf_threshold, 1.0, quant, grid, softmax=True)


def _decode_anchored(raw: np.ndarray, anchors: np.ndarray, anchors_in_cells: bool,
                     input_wh: tuple[int, int], conf_threshold: float, scale_x_y: float,
                     quant: Quant | None, grid: tuple[int, int] | None,
                     softmax: bool) -> Detections:
    """The two anchored heads: [yolo] (sigmoid classes, anchors in pixels, ``scale_x_y``) and
    [region] (softmax classes, anchors in grid cells)."""
    n_a = anchors.shape[0]
    rows, h, w, _nc = _grid_view(raw, n_a, grid)
    idx = _objectness_survivors(rows, conf_threshold, quant)
    if idx.size == 0:
        return Detections.empty()
    v = _dequant(rows[idx], quant)
    logits = v[:, 5:]
    best = np.argmax(logits, axis=1)
    if softmax:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob = e[np.arange(idx.size), best] / e.sum(axis=1)
    else:
        prob = _sigmoid(logits[np.arange(idx.size), best])
    score = _sigmoid(v[:, 4]) * prob
    keep = score >= conf_threshold
    if not keep.any():
        return Detections.empty()
    v, idx, best, score = v[keep], idx[keep], best[keep], score[keep]
    cell, a = np.divmod(idx, n_a)
    row, col = np.divmod(cell, w)
    net_w, net_h = input_wh
    sx, sy = net_w / w, net_h / h
    half = (scale_x_y - 1.0) / 2.0
    cx = (col + _sigmoid(v[:, 0]) * scale_x_y - half) * sx
    cy = (row + _sigmoid(v[:, 1]) * scale_x_y - half) * sy
    bw = np.exp(np.minimum(v[:, 2], 50.0)) * anchors[a, 0]
    bh = np.exp(np.minimum(v[:, 3], 50.0)) * anchors[a, 1]
    if anchors_in_cells:
        bw, bh = bw * sx, bh * sy
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return Detections(boxes.astype(np.float32), score.astype(np.float32), best.astype(np.int32))


def decode_anchor_free(raw: np.ndarray, classes: int, input_wh: tuple[int, int],
                       conf_threshold: float, quant: Quant | None = None,
                       normalized: bool = True) -> Detections:
    """Decode a YOLOv8-style anchor-free head: (1, 4+C, N) or transposed (1, N, 4+C).

    Rows are cx, cy, w, h (normalized to the input when ``normalized``, else input pixels)
    followed by C class scores already in [0, 1]; there is no objectness.
    """
    x = raw[0] if raw.ndim == 3 and raw.shape[0] == 1 else raw
    width = 4 + classes
    if x.ndim != 2 or width not in x.shape:
        raise ValueError(f"anchor-free head must be (1, {width}, N) or (1, N, {width}), "
                         f"got {raw.shape}")
    if x.shape[0] == width and x.shape[1] != width:
        x = x.T  # (N, 4+C) view
    cls = x[:, 4:]
    if quant is None:
        idx = np.flatnonzero(cls.max(axis=1) >= conf_threshold)
    else:
        scale, zp = quant
        q_min = math.ceil(zp + conf_threshold / scale)
        idx = np.flatnonzero(cls.max(axis=1).astype(np.int32) >= q_min)
    if idx.size == 0:
        return Detections.empty()
    v = _dequant(x[idx], quant)
    best = np.argmax(v[:, 4:], axis=1)
    score = v[np.arange(idx.size), 4 + best]
    keep = score >= conf_threshold
    v, best, score = v[keep], best[keep], score[keep]
    net_w, net_h = input_wh
    sx, sy = (net_w, net_h) if normalized else (1.0, 1.0)
    cx, cy, bw, bh = v[:, 0] * sx, v[:, 1] * sy, v[:, 2] * sx, v[:, 3] * sy
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return Detections(boxes.astype(np.float32), score.astype(np.float32), best.astype(np.int32))
