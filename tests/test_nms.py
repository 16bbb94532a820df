"""NMS, detection filters and letterbox geometry: tables plus an independent referee (OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edged.core.nms import iou_matrix, nms, select
from edged.core.preprocess import letterbox, letterbox_geometry

B = np.array


@pytest.mark.parametrize(("boxes", "scores", "classes", "iou", "kind", "expected"), [
    # two heavily overlapping boxes of one class: the weaker goes
    (B([[0, 0, 10, 10], [1, 1, 11, 11]]), B([0.9, 0.8]), B([0, 0]), 0.45, "greedy", [0]),
    # ... unless they are different classes (class-aware)
    (B([[0, 0, 10, 10], [1, 1, 11, 11]]), B([0.9, 0.8]), B([0, 1]), 0.45, "greedy", [0, 1]),
    # IoU 0.3 < 0.45: both stay
    (B([[0, 0, 10, 10], [5, 0, 15, 10]]), B([0.5, 0.7]), B([2, 2]), 0.45, "greedy", [1, 0]),
    # ... but a threshold below their IoU suppresses
    (B([[0, 0, 10, 10], [5, 0, 15, 10]]), B([0.5, 0.7]), B([2, 2]), 0.2, "greedy", [1]),
    # DIoU: same IoU, the distant centres' penalty lowers DIoU below the threshold -> kept
    (B([[0, 0, 10, 10], [4, 0, 14, 10]]), B([0.9, 0.8]), B([0, 0]), 0.4, "greedy", [0]),
    (B([[0, 0, 10, 10], [4, 0, 14, 10]]), B([0.9, 0.8]), B([0, 0]), 0.4, "diou", [0, 1]),
    # empty input
    (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.45, "greedy", []),
])
def test_nms_table(boxes, scores, classes, iou, kind, expected) -> None:
    keep = nms(boxes.astype(np.float32), scores.astype(np.float32), classes, iou, 100, kind,
               0.6)
    assert keep.tolist() == expected


def test_nms_max_detections_keeps_best() -> None:
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(10)], np.float32)
    scores = np.linspace(0.1, 0.9, 10).astype(np.float32)
    keep = nms(boxes, scores, np.zeros(10, int), 0.45, 3, "greedy", 0.6)
    assert keep.tolist() == [9, 8, 7]


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_opencv_batched(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 400, (n, 2))
    wh = rng.uniform(5, 120, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0.3, 1.0, n).astype(np.float32)
    classes = rng.integers(0, 4, n)
    ours = nms(boxes, scores, classes, 0.45, n, "greedy", 0.6)
    ref = cv2.dnn.NMSBoxesBatched(np.concatenate([xy, wh], 1).tolist(), scores.tolist(),
                                  classes.tolist(), 0.0, 0.45)
    assert sorted(ours.tolist()) == sorted(np.asarray(ref).reshape(-1).tolist())


def test_iou_matrix_values() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 25 / 175, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        iou_matrix(np.zeros((3, 3)), b)


def test_select_thresholds_allow_list_area() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 2, 2], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.3], np.float32)
    classes = np.array([0, 0, 1, 2])
    thresholds = np.array([0.4, 0.6, 0.2], np.float32)
    assert select(boxes, scores, classes, thresholds).tolist() == [True, True, False, True]
    allowed = np.array([True, False, True])
    assert select(boxes, scores, classes, allowed=allowed).tolist() == [True, True, False, True]
    assert select(boxes, scores, classes, min_area=50).tolist() == [True, False, True, True]


@pytest.mark.parametrize(("src", "net", "scale", "pad"), [
    ((1280, 720), (416, 416), 0.325, (0, 91)),
    ((720, 1280), (416, 416), 0.325, (91, 0)),
    ((416, 416), (416, 416), 1.0, (0, 0)),
    ((640, 272), (416, 416), 0.65, (0, 119)),
])
def test_letterbox_geometry_and_inverse(src, net, scale, pad) -> None:
    g = letterbox_geometry(*src, *net)
    assert g.scale_x == pytest.approx(scale, abs=2e-3) and (g.pad_x, g.pad_y) == pad
    # a box drawn in the source maps into the net input and back
    box = np.array([[src[0] * 0.1, src[1] * 0.2, src[0] * 0.6, src[1] * 0.9]], np.float32)
    in_net = np.array([[box[0, 0] * g.scale_x + g.pad_x, box[0, 1] * g.scale_y + g.pad_y,
                        box[0, 2] * g.scale_x + g.pad_x, box[0, 3] * g.scale_y + g.pad_y]])
    np.testing.assert_allclose(g.to_source(in_net), box, atol=1e-3)


def test_letterbox_pixels_pad_and_colour_order() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[..., 0] = 200  # blue in BGR
    out, g = letterbox(frame, 416, 416, 127, swap_rb=True)
    assert (out[: g.pad_y] == 127).all() and (out[g.pad_y + g.new_h:] == 127).all()
    inside = out[g.pad_y:g.pad_y + g.new_h]
    assert (inside[..., 2] == 200).all() and (inside[..., 0] == 0).all()  # now RGB
    with pytest.raises(ValueError, match="uint8"):
        letterbox(frame.astype(np.float32), 416, 416, 127, True)


def test_boxes_are_clipped_to_the_frame() -> None:
    g = letterbox_geometry(1280, 720, 416, 416)
    out = g.to_source(np.array([[-50, 0, 500, 500]], np.float32))
    assert out[0].tolist() == [0.0, 0.0, 1280.0, 720.0]
