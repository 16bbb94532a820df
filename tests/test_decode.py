"""Decoders: encode known boxes into head tensors and decode them back (float and int8), and
compare with OpenCV's own region/yolo layers on random-weight exports."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.core.decode import decode_anchor_free, decode_region, decode_yolo
from edged.export.assets import Assets
from tests.conftest import DATA
from tests.darknet_util import input_batch, random_float_export, tflite_outputs

NET = (416, 416)
ANCHORS = np.array([[10, 14], [23, 27], [37, 58]], np.float32)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _quantize(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    return np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)


# (row, col, anchor, class, objectness, class prob, box w px, box h px, offset x, offset y)
BOXES = [
    (3, 5, 0, 14, 0.9, 0.95, 30.0, 20.0, 0.3, 0.6),
    (10, 1, 2, 0, 0.8, 0.9, 60.0, 120.0, 0.5, 0.5),
    (0, 12, 1, 79, 0.7, 0.99, 40.0, 30.0, 0.8, 0.1),
]


def _yolo_tensor(grid: int, nc: int, scale_x_y: float) -> tuple[np.ndarray, list[tuple]]:
    t = np.full((1, grid, grid, 3 * (5 + nc)), -9.0, np.float32)  # nothing anywhere ...
    expected = []
    for row, col, a, cls, obj, prob, bw, bh, ox, oy in BOXES:  # ... but these boxes
        base = a * (5 + nc)
        # ox = sigmoid(tx) * s - (s - 1) / 2  =>  sigmoid(tx) = (ox + (s - 1) / 2) / s
        t[0, row, col, base + 0] = _logit((ox + (scale_x_y - 1) / 2) / scale_x_y)
        t[0, row, col, base + 1] = _logit((oy + (scale_x_y - 1) / 2) / scale_x_y)
        t[0, row, col, base + 2] = math.log(bw / ANCHORS[a, 0])
        t[0, row, col, base + 3] = math.log(bh / ANCHORS[a, 1])
        t[0, row, col, base + 4] = _logit(obj)
        t[0, row, col, base + 5 + cls] = _logit(prob)
        cx, cy = (col + ox) * NET[0] / grid, (row + oy) * NET[1] / grid
        expected.append((cls, obj * prob, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
    return t, expected


def _check(dets, expected, atol: float, score_atol: float) -> None:
    assert len(dets) == len(expected)
    order = np.argsort(-dets.scores)
    for (cls, score, box), i in zip(sorted(expected, key=lambda e: -e[1]), order, strict=True):
        assert int(dets.class_ids[i]) == cls
        assert dets.scores[i] == pytest.approx(score, abs=score_atol)
        np.testing.assert_allclose(dets.boxes[i], box, atol=atol)


@pytest.mark.parametrize("scale_x_y", [1.0, 1.05, 2.0])
@pytest.mark.parametrize("quantized", [False, True])
def test_yolo_round_trip(scale_x_y: float, quantized: bool) -> None:
    t, expected = _yolo_tensor(13, 80, scale_x_y)
    if quantized:
        scale, zp = 0.08, 3
        dets = decode_yolo(_quantize(t, scale, zp), ANCHORS, NET, 0.25, scale_x_y, (scale, zp))
        _check(dets, expected, atol=3.5, score_atol=0.03)
    else:
        dets = decode_yolo(t, ANCHORS, NET, 0.25, scale_x_y)
        _check(dets, expected, atol=1e-3, score_atol=1e-5)


def test_yolo_threshold_is_inclusive_and_filters() -> None:
    t, expected = _yolo_tensor(13, 80, 1.0)
    lowest = min(e[1] for e in expected)
    assert len(decode_yolo(t, ANCHORS, NET, lowest - 1e-4)) == 3
    assert len(decode_yolo(t, ANCHORS, NET, lowest + 1e-3)) == 2
    assert len(decode_yolo(t, ANCHORS, NET, 0.999)) == 0


@pytest.mark.parametrize("layout", ["nhwc", "flattened"])
@pytest.mark.parametrize("quantized", [False, True])
def test_region_round_trip(layout: str, quantized: bool) -> None:
    grid, nc, n_a = 13, 20, 5
    anchors = np.array([[1.08, 1.19], [3.42, 4.41], [6.63, 11.38], [9.42, 5.11],
                        [16.62, 10.52]], np.float32)
    t = np.full((1, grid, grid, n_a * (5 + nc)), -8.0, np.float32)
    t[..., 5::5 + nc] = 0.0
    cases = [(2, 3, 1, 7, 0.9, 0.3, 0.7), (8, 8, 4, 19, 0.75, 0.5, 0.5)]
    expected = []
    for row, col, a, cls, obj, ox, oy in cases:
        base = a * (5 + nc)
        bw, bh = 2.0, 3.0  # grid cells
        t[0, row, col, base:base + 5] = [_logit(ox), _logit(oy), math.log(bw / anchors[a, 0]),
                                         math.log(bh / anchors[a, 1]), _logit(obj)]
        t[0, row, col, base + 5:base + 5 + nc] = 0.0
        t[0, row, col, base + 5 + cls] = 6.0  # softmax ~ e^6 / (e^6 + 19)
        prob = math.exp(6) / (math.exp(6) + nc - 1)
        s = NET[0] / grid
        cx, cy, w, h = (col + ox) * s, (row + oy) * s, bw * s, bh * s
        expected.append((cls, obj * prob, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    raw = t.reshape(1, grid * grid, -1) if layout == "flattened" else t
    grid_arg = (grid, grid) if layout == "flattened" else None
    if quantized:
        scale, zp = 0.07, -5
        dets = decode_region(_quantize(raw, scale, zp), anchors, NET, 0.3, (scale, zp), grid_arg)
        _check(dets, expected, atol=3.0, score_atol=0.03)
    else:
        dets = decode_region(raw, anchors, NET, 0.3, None, grid_arg)
        _check(dets, expected, atol=1e-3, score_atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("quantized", [False, True])
def test_anchor_free_round_trip(transposed: bool, quantized: bool) -> None:
    nc, n = 80, 8400
    rng = np.random.default_rng(0)
    t = np.zeros((4 + nc, n), np.float32)
    t[:4] = rng.uniform(0.1, 0.2, (4, n))
    t[4:] = rng.uniform(0, 0.1, (nc, n))  # background scores
    expected = []
    for j, (cls, score, cx, cy, w, h) in zip([17, 4000, 8399], [
            (14, 0.91, 0.5, 0.5, 0.2, 0.1), (0, 0.6, 0.25, 0.75, 0.1, 0.3),
            (2, 0.4, 0.9, 0.1, 0.05, 0.05)], strict=True):
        t[:4, j] = [cx, cy, w, h]
        t[4 + cls, j] = score
        px = [(cx - w / 2) * NET[0], (cy - h / 2) * NET[1], (cx + w / 2) * NET[0],
              (cy + h / 2) * NET[1]]
        expected.append((cls, score, px))
    raw = (t.T if transposed else t)[None]
    if quantized:
        scale, zp = 1 / 255, -128
        dets = decode_anchor_free(_quantize(raw, scale, zp), nc, NET, 0.3, (scale, zp))
        # cx and w each carry up to half a step (416/255/2 px): a corner up to 1.63 px off
        _check(dets, expected, atol=1.7, score_atol=0.005)
    else:
        _check(decode_anchor_free(raw, nc, NET, 0.3), expected, atol=1e-3, score_atol=1e-6)


def test_bad_shapes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="A=3"):
        decode_yolo(np.zeros((1, 13, 13, 100), np.float32), ANCHORS, NET, 0.5)
    with pytest.raises(ValueError, match="anchor-free"):
        decode_anchor_free(np.zeros((1, 80, 100), np.float32), 80, NET, 0.5)


@pytest.mark.parametrize(("cfg_name", "layer"), [("yolov2-tiny.cfg", "detection_out"),
                                                 ("yolov4-tiny.cfg", None)])
def test_decoders_match_opencv_layers(cfg_name: str, layer: str | None, assets: Assets,
                                      tmp_path: Path) -> None:
    """OpenCV's region/yolo layers decode the same raw tensors as ours (random weights)."""
    cfg = DATA / cfg_name
    net, weights, float_path, _ = random_float_export(cfg, tmp_path, seed=11)
    img = cv2.imread(str(sorted(assets.holdout.iterdir())[0]))
    batch = input_batch(img, net.width, net.height)
    ours = tflite_outputs(float_path, batch)
    cvnet = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    cvnet.setInput(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    names_out = [layer] if layer else list(cvnet.getUnconnectedOutLayersNames())
    ref_rows = cvnet.forward(names_out)
    compared = 0
    for head, ref in zip(net.heads, ref_rows, strict=True):
        raw = ours[(1, *head.in_shape)]
        anchors = np.asarray(head.anchors, np.float32)
        if head.kind == "yolo":
            anchors = anchors[list(head.mask)]
            dets = decode_yolo(raw, anchors, NET, 1e-9, head.scale_x_y)
        else:
            dets = decode_region(raw, anchors, NET, 1e-9)
        assert len(dets) == ref.shape[0]  # every cell/anchor row, in OpenCV's row order
        ref_box = np.stack([(ref[:, 0] - ref[:, 2] / 2) * NET[0], (ref[:, 1] - ref[:, 3] / 2)
                            * NET[1], (ref[:, 0] + ref[:, 2] / 2) * NET[0],
                            (ref[:, 1] + ref[:, 3] / 2) * NET[1]], axis=1)
        np.testing.assert_allclose(dets.boxes, ref_box, rtol=1e-3, atol=1e-2)
        # OpenCV zeroes class scores under its threshold and, in the region layer, those its
        # internal NMS suppresses; wherever it kept the class we decoded, the scores agree.
        ref_at = ref[np.arange(len(dets)), 5 + dets.class_ids]
        kept = ref_at > 0
        assert kept.sum() > 10
        np.testing.assert_allclose(dets.scores[kept], ref_at[kept], rtol=1e-3, atol=1e-5)
        # ... and our best class is OpenCV's best class there (up to float ties)
        assert (ref[kept, 5:].max(axis=1) - ref_at[kept] <= 1e-5).mean() > 0.99
        compared += int(kept.sum())
    assert compared > 100
