"""`edged bench`: where the time of one frame goes, and what the vectorized decoder buys.

Measures, on one real frame: letterbox preprocess, invoke, decode+NMS (edged), and the same
decode written the way most example code writes it: a Python loop over cells and anchors with a
per-class ``cv2.dnn.NMSBoxes``. Both decoders must agree on the detections, or the ratio is void.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from edged.core.preprocess import Letterbox
from edged.core.types import Detections
from edged.engine.detector import Detector, DetectParams


@dataclass(frozen=True)
class Timing:
    runs: int
    min_ms: float
    median_ms: float
    p90_ms: float

    @staticmethod
    def of(samples_ms: list[float]) -> Timing:
        s = sorted(samples_ms)
        p90 = s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]
        return Timing(len(s), round(s[0], 3), round(statistics.median(s), 3), round(p90, 3))


@dataclass(frozen=True)
class BenchResult:
    model: str
    model_file: str
    backend: str
    runtime: str
    threads: int
    frame: tuple[int, int]
    detections: int
    preprocess: Timing
    invoke: Timing
    decode_nms: Timing
    naive_decode_nms: Timing
    naive_agrees: bool

    @property
    def speedup(self) -> float:
        return self.naive_decode_nms.median_ms / max(self.decode_nms.median_ms, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode_speedup_vs_naive"] = round(self.speedup, 1)
        return d


def _time(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def naive_postprocess(det: Detector, geom: Letterbox, params: DetectParams) -> Detections:
    """The per-anchor Python loop of typical example code (yolo heads only)."""
    net_w, net_h = det.input_size
    boxes: list[list[float]] = []
    scores: list[float] = []
    classes: list[int] = []
    for out in det.outputs:  # the same tensors the vectorized path reads
        t = det.interpreter.get_tensor(out.index)[0].astype(np.float32)
        if out.quant is not None:
            t = (t - out.quant[1]) * out.quant[0]
        gh, gw, ch = t.shape
        n_a = len(out.anchors)
        per = ch // n_a
        for row in range(gh):
            for col in range(gw):
                for a in range(n_a):
                    v = t[row, col, a * per:(a + 1) * per]
                    obj = 1.0 / (1.0 + math.exp(-float(v[4])))
                    cls_scores = obj / (1.0 + np.exp(-v[5:]))
                    c = int(np.argmax(cls_scores))
                    score = float(cls_scores[c])
                    if score < params.conf_threshold:
                        continue
                    cx = (col + 1.0 / (1.0 + math.exp(-float(v[0])))) / gw * net_w
                    cy = (row + 1.0 / (1.0 + math.exp(-float(v[1])))) / gh * net_h
                    w = math.exp(float(v[2])) * float(out.anchors[a][0])
                    h = math.exp(float(v[3])) * float(out.anchors[a][1])
                    boxes.append([cx - w / 2, cy - h / 2, w, h])
                    scores.append(score)
                    classes.append(c)
    keep: list[int] = []
    for c in sorted(set(classes)):
        idx = [i for i, k in enumerate(classes) if k == c]
        picked = cv2.dnn.NMSBoxes([boxes[i] for i in idx], [scores[i] for i in idx],
                                  params.conf_threshold, params.iou_threshold)
        keep.extend(idx[int(j)] for j in np.asarray(picked).reshape(-1))
    keep.sort(key=lambda i: -scores[i])
    keep = keep[:params.max_detections]
    if not keep:
        return Detections.empty()
    b = np.array([boxes[i] for i in keep], np.float32)
    b[:, 2:] += b[:, :2]
    return Detections(geom.to_source(b), np.array([scores[i] for i in keep], np.float32),
                      np.array([classes[i] for i in keep], np.int32))


def _same(a: Detections, b: Detections) -> bool:
    if len(a) != len(b):
        return False
    oa, ob = np.lexsort((a.scores, a.class_ids)), np.lexsort((b.scores, b.class_ids))
    return bool(np.array_equal(a.class_ids[oa], b.class_ids[ob])
                and np.allclose(a.boxes[oa], b.boxes[ob], atol=0.5)
                and np.allclose(a.scores[oa], b.scores[ob], atol=1e-4))


def run_bench(det: Detector, frame: np.ndarray, runs: int, params: DetectParams,
              backend: str, runtime: str, threads: int) -> BenchResult:
    if det.spec.head.type != "yolo":
        raise ValueError("the naive baseline is written for yolo heads")
    geom = det.preprocess(frame)
    for _ in range(3):
        det.invoke()
    pre = _time(lambda: det.preprocess(frame), runs)
    inv = _time(det.invoke, runs)
    post = _time(lambda: det.postprocess(geom, params), runs)
    fast = det.postprocess(geom, params)
    slow = naive_postprocess(det, geom, params)
    naive = _time(lambda: naive_postprocess(det, geom, params), max(3, runs // 10))
    return BenchResult(det.spec.name, det.model_path.name, backend, runtime, threads,
                       (frame.shape[1], frame.shape[0]), len(fast), Timing.of(pre),
                       Timing.of(inv), Timing.of(post), Timing.of(naive), _same(fast, slow))
