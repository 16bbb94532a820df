"""From per-frame detections to events: zones and masks, a tracker, and the event lifecycle.

Everything is per camera and runs on the inference thread, so it is numpy only (no scipy or
filterpy: heavy on a board) and vectorized over tracks: the per-frame cost with 20 objects and
3 zones stays well under the issue's 0.3 ms (``benchmarks/track.py``). Python loops run only
over what *changes* in a frame (a new track, an event starting, a zone entered), which at
steady state is nothing.

Coordinates are normalized to the frame: boxes ``(N, 4)`` xyxy and polygons ``[[x, y], ...]``
in [0, 1]. Times are seconds (float, e.g. ``ts_ns / 1e9``), never frames, because cameras run
at different and varying frame rates; only the confirmation window counts frames (it is about
how many times the detector had a chance to see the object).

Labels are whatever the caller uses (the model's label strings, or class ids); they are only
compared for equality: a track never changes label and a detection only joins a track of its
own label.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Label = str | int
# What an event id looks like (f"{start_ts_ns}-{instance}-{track_id}", EventTracker): a
# subscriber turning ids into file names accepts these only.
EVENT_ID_RE = re.compile(r"-?[0-9]{1,20}-[0-9A-Za-z]{1,32}-[0-9]{1,20}")
ANCHORS = ("bottom_center", "center")
"""Point of a box tested against zones and masks. ``bottom_center`` (the default) is where an
object touches the ground: a person *in front of* a masked TV has feet below it and is kept,
a person *on* the TV has its box bottom inside the TV and is dropped; a bird on a rail has its
feet on the rail. ``center`` suits views from above."""

ChangeKind = Literal["start", "update", "end"]
_EPS = 1e-6
"""Slack on time comparisons: epoch seconds as float64 are exact to ~0.2 µs, so "5 s after"
computed from ns timestamps may come out a hair short and wait a whole frame longer."""


# --- zones and masks -------------------------------------------------------------------------

def anchor_points(boxes: np.ndarray, anchor: str = "bottom_center") -> np.ndarray:
    """(N, 2) anchor point of each (N, 4) xyxy box, see ``ANCHORS``."""
    out = np.empty((boxes.shape[0], 2), np.float64)
    if anchor == "bottom_center":
        np.add(boxes[:, 0], boxes[:, 2], out=out[:, 0])
        out[:, 0] *= 0.5
        out[:, 1] = boxes[:, 3]
        return out
    if anchor == "center":
        np.add(boxes[:, :2], boxes[:, 2:], out=out)  # (x1 + x2, y1 + y2)
        out *= 0.5
        return out
    raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")


def _polygon(points: Iterable[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    poly = np.asarray(list(points), np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or poly.shape[0] < 3:
        raise ValueError(f"a polygon is at least 3 [x, y] points, got shape {poly.shape}")
    if not np.isfinite(poly).all():
        raise ValueError("polygon coordinates must be finite numbers")
    return tuple((float(x), float(y)) for x, y in poly)


class PolygonSet:
    """Several polygons compiled into one edge list, so testing N points against all of them is
    a handful of numpy operations instead of a loop over polygons.

    Even-odd rule (ray casting towards +x): self-intersecting polygons have holes where they
    overlap themselves, concave ones work as drawn. A point exactly on an edge may fall either
    side (it is a measure-zero case for box anchors that jitter by pixels anyway).
    """

    def __init__(self, polygons: Sequence[Iterable[Sequence[float]]]) -> None:
        polys = [np.asarray(_polygon(p), np.float64) for p in polygons]
        self.count = len(polys)
        if not polys:
            self._x1 = self._y1 = self._y2 = self._slope = np.zeros(0)
            self._starts = np.zeros(0, np.intp)
            return
        a = np.concatenate(polys)
        b = np.concatenate([np.roll(p, -1, axis=0) for p in polys])  # each edge a -> b
        self._x1, self._y1, self._y2 = a[:, 0], a[:, 1], b[:, 1]
        dy = b[:, 1] - a[:, 1]
        # horizontal edges never straddle a ray (y1 > py) != (y2 > py), so their slope is moot
        self._slope = (b[:, 0] - a[:, 0]) / np.where(dy == 0, 1.0, dy)
        self._starts = np.cumsum([0] + [len(p) for p in polys[:-1]]).astype(np.intp)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N, K) bool: point n is inside polygon k."""
        n = points.shape[0]
        if n == 0 or self.count == 0:
            return np.zeros((n, self.count), bool)
        px, py = points[:, :1], points[:, 1:2]
        above1 = self._y1 > py
        straddle = above1 != (self._y2 > py)
        cross = straddle & (px < self._x1 + (py - self._y1) * self._slope)
        inside: np.ndarray = (np.add.reduceat(cross, self._starts, axis=1) & 1).astype(bool)
        return inside

    def any(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: the point is inside at least one polygon."""
        if self.count == 0:
            return np.zeros(points.shape[0], bool)
        return np.asarray(self.contains(points).any(axis=1))


def in_polygon(points: np.ndarray, polygon: Iterable[Sequence[float]]) -> np.ndarray:
    """(N,) bool: each (N, 2) point is inside ``polygon`` ((K, 2), even-odd rule)."""
    out: np.ndarray = PolygonSet([polygon]).contains(np.asarray(points, np.float64))[:, 0]
    return out


def masked(boxes: np.ndarray, masks: Sequence[Iterable[Sequence[float]]] | PolygonSet,
           anchor: str = "bottom_center") -> np.ndarray:
    """(N,) bool: the box's anchor point lies inside a mask polygon, i.e. the detection is to be
    dropped before tracking. The anchor, not the box centre, for the reason given at
    ``ANCHORS``: a mask over a TV must not hide the person standing in front of it."""
    polys = masks if isinstance(masks, PolygonSet) else PolygonSet(masks)
    return polys.any(anchor_points(np.asarray(boxes, np.float64), anchor))


@dataclass(frozen=True)
class Zone:
    """A named polygon of a camera (normalized coordinates). ``labels``: only these labels are
    ever in the zone (None: all). ``inertia``: a tracked object enters (leaves) the zone after
    this many consecutive sightings inside (outside), Frigate's zone inertia: an anchor
    jittering across the border by a pixel does not make enter/leave storms."""

    name: str
    polygon: tuple[tuple[float, float], ...]
    labels: frozenset[Label] | None = None
    inertia: int = 3

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a zone needs a name ('' stands for the whole frame in counts)")
        object.__setattr__(self, "polygon", _polygon(self.polygon))
        if self.labels is not None:
            object.__setattr__(self, "labels", frozenset(self.labels))
        if not 1 <= self.inertia <= 100:
            raise ValueError(f"zone {self.name!r}: inertia must be in [1, 100], "
                             f"got {self.inertia}")


# --- tracker ---------------------------------------------------------------------------------

def _frame_input(boxes: np.ndarray, scores: np.ndarray, labels: Sequence[Label] | np.ndarray,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
    """One frame's (N, 4) float64 boxes and (N,) float32 scores, checked against the labels."""
    boxes = np.asarray(boxes, np.float64)
    scores = np.asarray(scores, np.float32)
    n = scores.shape[0]
    if boxes.shape != (n, 4) or len(labels) != n:
        raise ValueError(f"{what}: boxes {boxes.shape}, scores {scores.shape} and "
                         f"{len(labels)} labels do not describe the same N boxes")
    return boxes, scores


def greedy_match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of a greedy assignment on a (T, N) IoU matrix: the highest remaining pair
    first, each row and column used once, pairs below ``threshold`` never.

    Greedy rather than Hungarian: Hungarian needs scipy (or a Python O(n^3) loop), and with the
    ≤ 20 objects of a camera the two disagree only when one box overlaps two others almost
    equally, where neither answer is clearly right. Mutually best pairs (the best column of
    their row and the best row of their column) are exactly the ones greedy takes first and no
    other pair can displace, so they are taken in one vectorized step; the Python loop runs only
    over the contested rest, usually nothing.
    """
    t, n = iou.shape
    if t == 0 or n == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    best_col = iou.argmax(axis=1)
    best_row = iou.argmax(axis=0)
    rows = np.arange(t)
    mutual = (best_row[best_col] == rows) & (iou[rows, best_col] >= threshold)
    mr, mc = rows[mutual], best_col[mutual]
    if mr.size == min(t, n):
        return mr, mc
    free_r = np.ones(t, bool)
    free_r[mr] = False
    free_c = np.ones(n, bool)
    free_c[mc] = False
    sub = iou[np.ix_(free_r, free_c)]
    cand_r, cand_c = np.nonzero(sub >= threshold)
    if cand_r.size == 0:
        return mr, mc
    order = np.argsort(-sub[cand_r, cand_c], kind="stable")
    rmap, cmap = np.flatnonzero(free_r), np.flatnonzero(free_c)
    used_r: set[int] = set()
    used_c: set[int] = set()
    extra_r: list[int] = []
    extra_c: list[int] = []
    for k in order.tolist():
        r, c = int(cand_r[k]), int(cand_c[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        extra_r.append(int(rmap[r]))
        extra_c.append(int(cmap[c]))
    return (np.concatenate([mr, np.asarray(extra_r, np.intp)]),
            np.concatenate([mc, np.asarray(extra_c, np.intp)]))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T, N) IoU of every row of ``a`` with every row of ``b`` ((T, 4), (N, 4) xyxy, valid
    boxes): ``edged.core.nms.iou_matrix`` without its checks and clips, which cost more than
    the arithmetic at this size."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(iw, 0, out=iw)
    np.maximum(ih, 0, out=ih)
    iw *= ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - iw
    np.maximum(union, 1e-12, out=union)
    iou: np.ndarray = iw / union
    return iou


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) IoU of row n of ``a`` with row n of ``b`` (both (N, 4) xyxy)."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
             - inter)
    out: np.ndarray = inter / np.maximum(union, 1e-12)
    return out


class Tracker:
    """Per-camera multi-object tracker: IoU association per label with a damped
    constant-velocity motion model.

    Each frame, every track's box is predicted to the frame's time from the velocity of its box
    centre: an exponential average of the measured centre velocities with time constant
    ``velocity_s``, so a measurement ``dt`` after the last weighs ``1 - exp(-dt / velocity_s)``.
    Weighing by time, not per frame, makes tracking the same at any frame rate. A per-frame
    weight of 1/2 averaged over 0.4 s at 5 fps but over 0.08 s at 25 fps, where a detector's
    jitter of a few pixels, or an occluder cutting a box, read as a fast motion and carried
    the prediction off (measured on real footage by benchmarks/events_accuracy.py).
    The default, 0.29 s, gives the newest measurement weight 1/2 at 5 fps; the first
    measurement is taken whole. The prediction is damped: the velocity decays with time
    constant ``coast_s`` while the object is unseen, so a track missing for long stops drifting
    (it travels at most ``v * coast_s``) instead of flying off. Detections are matched to the
    predicted boxes of tracks of the same label by greedy IoU (``greedy_match``), at least
    ``iou_min``, then what is left by centre distance (``near`` box diagonals, see ``_near``).
    A track unseen for more than ``stale_s`` is matched only by IoU of at least ``stale_iou``
    with its last-seen box: its prediction is worth little by then, and a loose match would
    hand it to another object of its label that appears nearby (a different cyclist seconds
    later, after a cut: measured on real footage by benchmarks/events_accuracy.py);
    matched tracks take the detected box as is (the detector is the measurement;
    smoothing the box would lag behind a moving object), unmatched detections start new tracks
    with the next id (monotonic from 1, never reused), and tracks unseen for longer than
    ``max_miss_s`` are dropped.

    State is a table of columns (``cols``), one row per track, so every step is vectorized.
    Owners (``EventTracker``) add their own columns with ``add_column``: they are appended and
    dropped with the tracks. Built-in columns: ``id``, ``label`` (label code, see ``labels``),
    ``box`` (last detected), ``vel`` (centre velocity per second), ``first_ts``, ``last_ts``,
    ``hits``, ``last_frame`` (``frame`` of the last hit), and for the current frame only
    ``matched``, ``score`` (0 when missed) and ``det`` (index of the detection, -1).
    """

    def __init__(self, iou_min: float = 0.1, max_miss_s: float = 5.0,
                 velocity_s: float = 0.2 / math.log(2), coast_s: float = 1.0, near: float = 1.0,
                 stale_s: float = 1.0, stale_iou: float = 0.3) -> None:
        if not 0 < iou_min <= 1 or not 0 < stale_iou <= 1 or stale_s <= 0:
            raise ValueError(f"iou_min and stale_iou must be in (0, 1], stale_s > 0; got "
                             f"{iou_min}, {stale_iou}, {stale_s}")
        if velocity_s <= 0 or coast_s <= 0 or max_miss_s <= 0 or near < 0:
            raise ValueError("velocity_s > 0, coast_s > 0, max_miss_s > 0, near >= 0")
        self.iou_min = iou_min
        self.max_miss_s = max_miss_s
        self.velocity_s = velocity_s
        self.coast_s = coast_s
        self.near = near
        self.stale_s = stale_s
        self.stale_iou = stale_iou
        self.frame = -1
        self.labels: list[Label] = []  # code -> label
        self._codes: dict[Label, int] = {}
        self._next_id = 1
        self._fills: dict[str, object] = {}
        self.cols: dict[str, np.ndarray] = {}
        self.new = slice(0, 0)  # rows of the tracks created by the last update
        for name, shape, dtype, fill in (
                ("id", (), np.int64, 0), ("label", (), np.int32, 0),
                ("box", (4,), np.float64, 0.0), ("vel", (2,), np.float64, 0.0),
                ("first_ts", (), np.float64, 0.0), ("last_ts", (), np.float64, 0.0),
                ("hits", (), np.int64, 0), ("last_frame", (), np.int64, 0),
                ("matched", (), bool, False), ("score", (), np.float32, 0.0),
                ("det", (), np.intp, -1)):
            self.add_column(name, shape, dtype, fill)

    def __len__(self) -> int:
        return int(self.cols["id"].shape[0])

    def add_column(self, name: str, shape: tuple[int, ...], dtype: type | np.dtype,
                   fill: object) -> None:
        """A per-track column of ``shape`` per row; new tracks get ``fill``."""
        if name in self.cols:
            raise ValueError(f"column {name!r} exists")
        col = np.empty((len(self) if self.cols else 0, *shape), dtype)
        col[...] = fill
        self.cols[name] = col
        self._fills[name] = fill

    def code(self, label: Label) -> int:
        """The label's code in the ``label`` column (assigned on first sight)."""
        c = self._codes.get(label)
        if c is None:
            c = self._codes[label] = len(self.labels)
            self.labels.append(label)
        return c

    def codes(self, labels: Sequence[Label] | np.ndarray) -> np.ndarray:
        values = labels.tolist() if isinstance(labels, np.ndarray) else labels
        get = self._codes.get
        return np.fromiter((c if (c := get(v)) is not None else self.code(v) for v in values),
                           np.int32, len(values))

    def predicted(self, ts: float, clip: bool = True) -> np.ndarray:
        """(T, 4) boxes of the tracks predicted to time ``ts``; ``clip``: cut at the frame's
        edges, as a detector reports an object leaving it."""
        c = self.cols
        dt = np.maximum(ts - c["last_ts"], 0.0)
        reach = self.coast_s * -np.expm1(-dt / self.coast_s)  # ∫ exp(-t/coast) dt over [0, dt]
        shift = c["vel"] * reach[:, None]
        out: np.ndarray = c["box"] + np.concatenate((shift, shift), axis=1)
        if clip:
            np.maximum(out, 0.0, out=out)
            np.minimum(out, 1.0, out=out)
        return out

    def drop(self, gone: np.ndarray) -> None:
        """Remove the tracks where the (T,) bool ``gone`` is set."""
        if gone.any():
            keep = ~gone
            for name, col in self.cols.items():
                self.cols[name] = col[keep]

    def _near(self, ts: float, boxes: np.ndarray, codes: np.ndarray, rows: np.ndarray,
              cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Second pass over what IoU left unmatched: a small fast object (a bird, 5 fps) or one
        that turned can miss its predicted box entirely. A detection whose centre is within
        ``near`` diagonals of a track's predicted centre, with an area within a factor 2 of the
        track's, joins it (greedy, nearest first): otherwise every such frame would cut the
        visit into a new track, and that track (no velocity yet) would likely lose the next.

        Distances are measured in box sizes (x by the larger of the two widths, y by the larger
        height, so a diagonal is sqrt(2)), not in normalized frame units: on a 2.35:1 frame a
        normalized unit of x is 2.35 times one of y, and a person 330 px to the side had come
        within "one diagonal" of a tall narrow box. The prediction is not cut at the frame's
        edges here: its size is the object's, and its centre may be outside (an object the
        occluder's cut box sent flying upwards is still matched where it reappears)."""
        free_t = ts - self.cols["last_ts"] <= self.stale_s  # stale tracks: IoU only
        free_t[rows] = False
        free_d = np.ones(boxes.shape[0], bool)
        free_d[cols] = False
        tr, dr = np.flatnonzero(free_t), np.flatnonzero(free_d)
        same = self.cols["label"][tr][:, None] == codes[dr][None, :]
        if not same.any():
            return rows, cols
        pred = self.predicted(ts, clip=False)[tr]  # whole: its size is the object's
        det = boxes[dr]
        pc = (pred[:, :2] + pred[:, 2:]) * 0.5
        dc = (det[:, :2] + det[:, 2:]) * 0.5
        pw, ph = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
        dw, dh = det[:, 2] - det[:, 0], det[:, 3] - det[:, 1]
        w = np.maximum(np.maximum(pw[:, None], dw[None, :]), 1e-12)
        h = np.maximum(np.maximum(ph[:, None], dh[None, :]), 1e-12)
        dist = np.hypot((pc[:, None, 0] - dc[None, :, 0]) / w,
                        (pc[:, None, 1] - dc[None, :, 1]) / h)
        ratio = (pw * ph)[:, None] / np.maximum((dw * dh)[None, :], 1e-12)
        near = 1.0 - dist / math.sqrt(2.0)
        near[~same | (ratio > 2.0) | (ratio < 0.5)] = -1.0
        r2, c2 = greedy_match(near, 1.0 - self.near)
        if r2.size == 0:
            return rows, cols
        return np.concatenate((rows, tr[r2])), np.concatenate((cols, dr[c2]))

    def update(self, ts: float, boxes: np.ndarray, scores: np.ndarray,
               labels: Sequence[Label] | np.ndarray) -> np.ndarray:
        """Track one frame; returns the track id of each detection, (N,) int64."""
        boxes, scores = _frame_input(boxes, scores, labels, "track")
        return self.update_codes(ts, boxes, scores, self.codes(labels))

    def update_codes(self, ts: float, boxes: np.ndarray, scores: np.ndarray,
                     codes: np.ndarray) -> np.ndarray:
        """``update`` with label codes (``codes()``) and validated float64 boxes."""
        c = self.cols
        if math.isfinite(self.max_miss_s) and len(self):
            self.drop(ts - c["last_ts"] > self.max_miss_s)
        self.frame += 1
        n = scores.shape[0]
        t = len(self)
        ids = np.empty(n, np.int64)
        c["matched"][:] = False
        c["score"][:] = 0.0
        c["det"][:] = -1
        if t and n:
            pred = self.predicted(ts)
            stale = ts - c["last_ts"] > self.stale_s
            if stale.any():
                pred[stale] = c["box"][stale]
            iou = iou_matrix(pred, boxes)
            iou[c["label"][:, None] != codes[None, :]] = -1.0
            if stale.any():
                iou[stale[:, None] & (iou < self.stale_iou)] = -1.0
            rows, cols = greedy_match(iou, self.iou_min)
        else:
            rows = cols = np.zeros(0, np.intp)
        if t and n and rows.size < min(t, n):
            rows, cols = self._near(ts, boxes, codes, rows, cols)
        if rows.size:
            det = boxes[cols]
            dt = ts - c["last_ts"][rows]
            centre = (det[:, :2] + det[:, 2:]) * 0.5
            old = c["box"][rows]
            measured = (centre - (old[:, :2] + old[:, 2:]) * 0.5) / np.maximum(dt, 1e-6)[:, None]
            # first velocity measurement taken whole, later ones averaged; no time, no news
            alpha = np.where(c["hits"][rows] == 1, 1.0, -np.expm1(-dt / self.velocity_s))
            alpha = np.where(dt > 0, alpha, 0.0)[:, None]
            c["vel"][rows] = alpha * measured + (1 - alpha) * c["vel"][rows]
            c["box"][rows] = det
            c["last_ts"][rows] = ts
            c["hits"][rows] += 1
            c["last_frame"][rows] = self.frame
            c["matched"][rows] = True
            c["score"][rows] = scores[cols]
            c["det"][rows] = cols
            ids[cols] = c["id"][rows]
        fresh = np.ones(n, bool)
        fresh[cols] = False
        k = int(fresh.sum())
        self.new = slice(t, t + k)
        if k:
            for name, col in c.items():
                tail = np.empty((k, *col.shape[1:]), col.dtype)
                tail[...] = self._fills[name]
                c[name] = np.concatenate((col, tail))
            which = np.flatnonzero(fresh)
            new_ids = np.arange(self._next_id, self._next_id + k, dtype=np.int64)
            self._next_id += k
            c["id"][t:] = new_ids
            c["label"][t:] = codes[which]
            c["box"][t:] = boxes[which]
            c["first_ts"][t:] = ts
            c["last_ts"][t:] = ts
            c["hits"][t:] = 1
            c["last_frame"][t:] = self.frame
            c["matched"][t:] = True
            c["score"][t:] = scores[which]
            c["det"][t:] = which
            ids[which] = new_ids
        return ids


# --- events ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventRules:
    """When a track becomes an event, how it is reported and when it ends (per label).

    The values of edged's ``events`` configuration (edged.config.EventsConfig) and why:

    - confirmation: ``min_hits`` sightings within the last ``window`` frames, the median of
      their scores at least ``min_score``. 3 of 5: a steady object is confirmed on its 3rd
      frame, 0.4 s after it appeared at 5 fps (the issue asks for < 1 s; Frigate's "≥ 3
      frames" takes ~10 s on slow CPUs because its frames are skipped), while a one- or
      two-frame flicker (a shadow, a leaf) never is; 2 misses of 5 are tolerated for an object
      near the detection threshold. The median, not the mean, so one lucky frame does not carry
      a ghost, nor one bad frame sink a real object. 0.35: above the 0.25 detection threshold,
      so the objects the detector is unsure about need to be seen better than that.
    - ``end_after_s`` (5 s, Frigate's default): an event ends once its object was unseen this
      long. Long enough to bridge occlusions and detection drop-outs (a fragmented visit is
      worse than a late end, whose time is the last sighting anyway, not the decision time).
      ``stationary_end_after_s`` (30 s) replaces it while the object is stationary: a bird on
      the rail that the detector loses for 10 s is still the same visit.
    - ``stationary_after_s`` (30 s) / ``stationary_iou`` (0.7): an object whose box kept an IoU
      ≥ 0.7 with its box at the start of that period (jitter is fine, walking away is not) is
      ``stationary``; it stays one event however long it sits.
    - ``update_interval_s`` (10 s): at most one ``update`` per event this often (a zone entered
      for the first time is the exception: it is sent at once, and can happen only once per
      zone). ``snapshot_margin`` (0.05): a sighting is a better snapshot when its score beats
      the current snapshot's by this much.
    """

    # Declared (with their defaults) by edged.config.EventsConfig, the one place users set them.
    min_hits: int
    window: int
    min_score: float
    end_after_s: float
    stationary_after_s: float
    update_interval_s: float
    # edged's own, not configurable:
    stationary_end_after_s: float = 30.0
    stationary_iou: float = 0.7
    snapshot_margin: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.min_hits <= self.window:
            raise ValueError(f"need 1 <= min_hits <= window, got {self.min_hits}, {self.window}")
        if not 0 <= self.min_score <= 1 or not 0 < self.stationary_iou <= 1:
            raise ValueError("min_score in [0, 1] and stationary_iou in (0, 1]")
        if min(self.end_after_s, self.stationary_end_after_s, self.stationary_after_s) <= 0 \
                or self.update_interval_s < 0 or self.snapshot_margin < 0:
            raise ValueError("times must be > 0 (update_interval_s, snapshot_margin >= 0)")

    def _row(self) -> tuple[float, ...]:
        return (self.end_after_s, self.stationary_end_after_s, self.stationary_after_s,
                self.stationary_iou, self.update_interval_s, self.snapshot_margin,
                float(self.window), float(self.min_hits))


_END, _SEND, _SAFTER, _SIOU, _UPD, _MARGIN, _WINDOW, _MINHITS = range(8)


@dataclass(frozen=True)
class Change:
    """One event message to publish (``event/<camera>/``), from ``EventTracker.update``.

    ``start_ts``: first sighting of the object (before its confirmation); ``last_ts``: last
    sighting (for an ``end``, the end time). ``top_score``: best score so far; ``best_box`` /
    ``best_score``: box and score of the current snapshot sighting, which is this frame's when
    ``better_snapshot`` is set (the caller takes the snapshot from this frame then: every
    ``start`` has it). ``zones``: zones it is in now; ``zones_entered``: every zone it has been
    in, in the order first entered. ``end_reason``: ``left`` or ``close_all``'s reason (ends),
    else None.
    """

    kind: ChangeKind
    track_id: int
    event_id: str
    label: Label
    start_ts: float
    last_ts: float
    top_score: float
    best_box: tuple[float, float, float, float]
    best_score: float
    zones: tuple[str, ...]
    zones_entered: tuple[str, ...]
    stationary: bool
    better_snapshot: bool = False
    end_reason: str | None = None


@dataclass
class _Bookkeeping:
    """What only changes rarely, kept by track id in Python."""

    entered: dict[int, list[str]] = field(default_factory=dict)
    event_ids: dict[int, str] = field(default_factory=dict)


class EventTracker:
    """One camera's detections -> event changes (start, update, end): a ``Tracker`` plus the
    lifecycle of ``EventRules`` (per label, ``default`` for the rest), ``zones`` and ``masks``.

    Per frame (``update``): detections whose anchor is in a mask are dropped; the rest are
    tracked; a track confirmed by its label's rules starts an event; an event's zones change
    (with each zone's inertia), it turns (or stops being) stationary, or a better snapshot
    comes: an update, at most every ``update_interval_s`` unless a zone is entered for the
    first time; unseen for ``end_after_s`` (``stationary_end_after_s`` when stationary): end,
    reason ``left``. Unconfirmed tracks are forgotten silently once they have had no hit in
    their label's ``window`` frames. A track is one event at most: once ended, its object
    coming back is a new track and a new event.

    Event ids are ``f"{start_ts_ns}-{instance}-{track_id}"``: chronological as strings (for
    epoch times), and unique across restarts thanks to ``instance``, a random hex per tracker
    (track ids restart at 1, and a replayed clip repeats its timestamps).
    """

    def __init__(self, default: EventRules, rules: Mapping[Label, EventRules] | None = None,
                 zones: Sequence[Zone] = (),
                 masks: Sequence[Iterable[Sequence[float]]] = (), anchor: str = "bottom_center",
                 iou_min: float = 0.1, instance: str | None = None) -> None:
        anchor_points(np.zeros((0, 4)), anchor)  # validates
        names = [z.name for z in zones]
        if len(set(names)) != len(names):
            raise ValueError(f"zone names must be unique, got {names}")
        self.default = default
        self.rules = dict(rules or {})
        self.zones = tuple(zones)
        self.anchor = anchor
        self.instance = secrets.token_hex(4) if instance is None else instance
        self.tracker = Tracker(iou_min=iou_min, max_miss_s=math.inf)
        self.counts_changed = False
        """True after an ``update`` that may have changed ``counts()`` (an event started or
        ended, an open event's zones changed): publish occupancy then."""
        self.wall_offset_s = 0.0
        """Wall clock minus the clock of ``ts`` (a caller tracking on a monotonic clock, which
        no NTP step moves, sets it): event ids carry wall-clock start times."""
        self._masks = PolygonSet(masks)
        self._zoneset = PolygonSet([z.polygon for z in zones])
        self._names = tuple(names)
        self._inertia = np.array([z.inertia for z in zones], np.int8)
        self._ring_w = max([self.default.window, *(r.window for r in self.rules.values())])
        self._table = np.zeros((0, 8), np.float64)  # label code -> rule row
        self._allowed = np.zeros((0, len(zones)), bool)  # label code -> zones it may be in
        self._book = _Bookkeeping()
        nz = len(zones)
        for name, shape, dtype, fill in (
                ("confirmed", (), bool, False), ("ring", (self._ring_w,), np.float32, 0.0),
                ("top", (), np.float32, 0.0), ("snap", (), np.float32, 0.0),
                ("best", (4,), np.float64, 0.0), ("zhits", (nz,), np.int8, 0),
                ("inside", (nz,), bool, False), ("pub_inside", (nz,), bool, False),
                ("entered_n", (), np.int32, 0), ("pub_entered_n", (), np.int32, 0),
                ("still_box", (4,), np.float64, 0.0), ("still_ts", (), np.float64, 0.0),
                ("stationary", (), bool, False), ("pub_stationary", (), bool, False),
                ("last_msg", (), np.float64, 0.0)):
            self.tracker.add_column(name, shape, dtype, fill)

    def rules_for(self, label: Label) -> EventRules:
        return self.rules.get(label, self.default)

    def _codes(self, labels: Sequence[Label] | np.ndarray) -> np.ndarray:
        codes = self.tracker.codes(labels)
        while self._table.shape[0] < len(self.tracker.labels):  # a label seen the first time
            label = self.tracker.labels[self._table.shape[0]]
            self._table = np.vstack((self._table, self.rules_for(label)._row()))
            ok = [z.labels is None or label in z.labels for z in self.zones]
            self._allowed = np.vstack((self._allowed, np.array([ok], bool)))
        return codes

    # --- per frame ---

    def update(self, ts: float, boxes: np.ndarray, scores: np.ndarray,
               labels: Sequence[Label] | np.ndarray) -> list[Change]:
        """One frame of detections (normalized xyxy boxes) at time ``ts`` (seconds): the event
        changes it causes, ends first."""
        boxes, scores = _frame_input(boxes, scores, labels, "events")
        n = scores.shape[0]
        codes = self._codes(labels)
        if self._masks.count and n:
            keep = ~self._masks.any(anchor_points(boxes, self.anchor))
            boxes, scores, codes = boxes[keep], scores[keep], codes[keep]
        tr = self.tracker
        c = tr.cols
        self.counts_changed = False
        changes: list[Change] = []
        if len(tr):  # ends first: unseen for too long at this frame's time, before matching
            r = self._table[c["label"]]
            allow = np.where(c["stationary"], r[:, _SEND], r[:, _END])
            gone = ts - c["last_ts"] >= allow - _EPS
            if gone.any():
                changes += self._end(gone, "left")
        tr.update_codes(ts, boxes, scores, codes)
        c = tr.cols
        new = tr.new
        if new.stop > new.start:
            c["still_box"][new] = c["box"][new]
            c["still_ts"][new] = ts
        r = self._table[c["label"]]
        # unconfirmed tracks without a hit in their window can no longer confirm: forget them
        stale = ~c["confirmed"] & (tr.frame - c["last_frame"] >= r[:, _WINDOW])
        if stale.any():
            for tid in c["id"][stale].tolist():
                self._book.entered.pop(tid, None)
            tr.drop(stale)
            r = r[~stale]
        if len(tr) == 0:
            return changes
        matched = c["matched"]
        score = c["score"]
        c["ring"][:, tr.frame % self._ring_w] = score
        np.maximum(c["top"], score, out=c["top"])
        m_rows = np.flatnonzero(matched)
        if self.zones:
            self._zones(m_rows)
        self._stationary(ts, m_rows, r)
        confirmed = c["confirmed"].copy()  # before this frame's starts: they need no update
        waiting = np.flatnonzero(~confirmed & matched & (c["hits"] >= r[:, _MINHITS]))
        if waiting.size:
            changes += self._confirm(ts, waiting)
        # updates of open events
        better = matched & (score > c["snap"] + r[:, _MARGIN])
        changed = c["stationary"] != c["pub_stationary"]
        if self.zones:
            changed |= (c["inside"] != c["pub_inside"]).any(axis=1)
        due = ts - c["last_msg"] >= r[:, _UPD] - _EPS
        grew = c["entered_n"] > c["pub_entered_n"]
        fire = confirmed & (grew | (due & (changed | better)))
        if fire.any():
            changes += self._updates(ts, np.flatnonzero(fire), better)
        return changes

    def _zones(self, rows: np.ndarray) -> None:
        """Zone hysteresis of the tracks seen this frame: each sighting inside (outside) moves a
        counter towards ``inertia`` (0); reaching it enters (leaves) the zone."""
        c = self.tracker.cols
        if rows.size == 0:
            return
        raw = self._zoneset.contains(anchor_points(c["box"][rows], self.anchor))
        raw &= self._allowed[c["label"][rows]]
        hits = c["zhits"][rows]
        hits += raw
        hits += raw
        hits -= 1  # +1 inside, -1 outside, kept in [0, inertia]
        np.maximum(hits, 0, out=hits)
        np.minimum(hits, self._inertia, out=hits)
        c["zhits"][rows] = hits
        was = c["inside"][rows]
        now = np.where(hits >= self._inertia, True, np.where(hits == 0, False, was))
        flips = now != was
        if not flips.any():
            return
        c["inside"][rows] = now
        if c["confirmed"][rows[flips.any(axis=1)]].any():
            self.counts_changed = True
        for i, z in zip(*np.nonzero(flips & now), strict=True):  # entered: rare, in Python
            row = int(rows[i])
            tid = int(c["id"][row])
            seen = self._book.entered.setdefault(tid, [])
            if self._names[z] not in seen:
                seen.append(self._names[z])
                c["entered_n"][row] = len(seen)

    def _stationary(self, ts: float, rows: np.ndarray, r: np.ndarray) -> None:
        """A seen track whose box left its reference (IoU < ``stationary_iou``) moves: the
        reference restarts there; one that stayed ``stationary_after_s`` is stationary (its
        velocity is zeroed, so a long miss does not drift its prediction away)."""
        if rows.size == 0:
            return
        c = self.tracker.cols
        rr = r[rows]
        moved = pairwise_iou(c["box"][rows], c["still_box"][rows]) < rr[:, _SIOU]
        if moved.any():
            mv = rows[moved]
            c["still_box"][mv] = c["box"][mv]
            c["still_ts"][mv] = ts
        still = ~moved & (ts - c["still_ts"][rows] >= rr[:, _SAFTER] - _EPS)
        c["stationary"][rows] = still
        if still.any():
            c["vel"][rows[still]] = 0.0

    def _confirm(self, ts: float, waiting: np.ndarray) -> list[Change]:
        """Start the events of the tracks in ``waiting`` (seen now, unconfirmed, enough hits in
        all) whose last ``window`` frames meet their label's rules."""
        tr = self.tracker
        c = tr.cols
        out: list[Change] = []
        for row in waiting.tolist():
            rules = self.rules_for(tr.labels[int(c["label"][row])])
            seen = c["ring"][row, (tr.frame - np.arange(rules.window)) % self._ring_w]
            seen = seen[seen > 0]
            if seen.size < rules.min_hits or float(np.median(seen)) < rules.min_score:
                continue
            c["confirmed"][row] = True
            self._published(ts, row, snapshot=True)
            tid = int(c["id"][row])
            start_ns = round((float(c["first_ts"][row]) + self.wall_offset_s) * 1e9)
            self._book.event_ids[tid] = f"{start_ns}-{self.instance}-{tid}"
            out.append(self._change("start", row, better=True))
            self.counts_changed = True
        return out

    def _updates(self, ts: float, rows: np.ndarray, better: np.ndarray) -> list[Change]:
        out = []
        for row in rows.tolist():
            b = bool(better[row])
            self._published(ts, row, snapshot=b)
            out.append(self._change("update", row, better=b))
        return out

    def _published(self, ts: float, row: int, snapshot: bool) -> None:
        """Row ``row``'s state as of the message sent now (``snapshot``: this frame's sighting
        is its snapshot)."""
        c = self.tracker.cols
        if snapshot:
            c["snap"][row] = c["score"][row]
            c["best"][row] = c["box"][row]
        c["last_msg"][row] = ts
        c["pub_inside"][row] = c["inside"][row]
        c["pub_entered_n"][row] = c["entered_n"][row]
        c["pub_stationary"][row] = c["stationary"][row]

    def _end(self, gone: np.ndarray, reason: str) -> list[Change]:
        """End the events of the ``gone`` tracks (confirmed ones: unconfirmed go silently) and
        drop the tracks."""
        tr = self.tracker
        c = tr.cols
        out = [self._change("end", row, reason=reason)
               for row in np.flatnonzero(gone & c["confirmed"]).tolist()]
        for tid in c["id"][gone].tolist():
            self._book.entered.pop(tid, None)
            self._book.event_ids.pop(tid, None)
        if out:
            self.counts_changed = True
        tr.drop(gone)
        return out

    def _change(self, kind: ChangeKind, row: int, better: bool = False,
                reason: str | None = None) -> Change:
        c = self.tracker.cols
        tid = int(c["id"][row])
        b = c["best"][row]
        return Change(
            kind=kind, track_id=tid, event_id=self._book.event_ids[tid],
            label=self.tracker.labels[int(c["label"][row])],
            start_ts=float(c["first_ts"][row]), last_ts=float(c["last_ts"][row]),
            top_score=float(c["top"][row]),
            best_box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            best_score=float(c["snap"][row]),
            zones=tuple(self._names[z] for z in np.flatnonzero(c["inside"][row]).tolist()),
            zones_entered=tuple(self._book.entered.get(tid, ())),
            stationary=bool(c["stationary"][row]), better_snapshot=better, end_reason=reason)

    # --- whole camera ---

    def close_all(self, ts: float, reason: str) -> list[Change]:
        """End every open event now (``reason``: shutdown, removed, ...) and forget all tracks.
        ``ts`` is accepted for symmetry with ``update``; an end's time is its last sighting."""
        del ts
        tr = self.tracker
        self.counts_changed = False
        if len(tr) == 0:
            return []
        return self._end(np.ones(len(tr), bool), reason)

    def open_events(self) -> list[Change]:
        """The open events as they are now (kind ``update``, no snapshot): for a status."""
        c = self.tracker.cols
        return [self._change("update", row)
                for row in np.flatnonzero(c["confirmed"]).tolist()]

    def counts(self) -> dict[tuple[str, Label], int]:
        """Occupancy: open events per (zone, label); zone "" is the whole frame. Only non-zero
        entries (the caller knows its zones and labels to show zeros)."""
        c = self.tracker.cols
        rows = np.flatnonzero(c["confirmed"])
        out: dict[tuple[str, Label], int] = {}
        labels = self.tracker.labels
        for row in rows.tolist():
            label = labels[int(c["label"][row])]
            out[("", label)] = out.get(("", label), 0) + 1
            for z in np.flatnonzero(c["inside"][row]).tolist():
                key = (self._names[z], label)
                out[key] = out.get(key, 0) + 1
        return out
