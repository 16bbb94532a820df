#!/usr/bin/env python3
"""Events against a reference on real footage: does one continuous presence give one event?

    python benchmarks/events_accuracy.py [--assets DIR] [--rates native,10,5] [-v]
        [--clips bikes,carphone_pristine,bigbuckbunny] [--video PATH] [--vtest]
        [--gap 1] [--density 0.5] [--score S]

Clips: the registry videos of ``edged.export.assets``, fetched (or only checked) into
``--assets`` (default ``<repo>/.assets``).

Reference detections (the ground truth). OpenCV's darknet reader (``cv2.dnn.readNetFromDarknet``)
runs the original float COCO yolov3-tiny weights on every frame. Input 416x416 with edged's
letterbox (aspect kept, pad 127, RGB: ``edged.core.preprocess.letterbox``), not a plain resize:
bikes is 2.35:1, and a stretched input would make the reference disagree with edged for a reason
that has nothing to do with events. Each output row is one box of its argmax class, score =
objectness x class probability (as edged decodes), kept at the daemon's default
``detection.conf_threshold``, then per-class NMS (``cv2.dnn.NMSBoxesBatched``) at its default
``detection.iou_threshold`` (both from ``edged.config.DetectionConfig``).

Shots. bikes is a montage: a cut replaces every object at once, which no fixed camera does. A
frame whose 64x36 grey thumbnail differs from the previous one's by >= 30 grey levels on average
starts a new shot (bikes: 5 cuts, at 47-83 levels; no other frame of the three clips exceeds 21).

Reference presences. Per label and shot, reference detections are linked in frame order: greedy
one-to-one by IoU >= 0.3 with each track's last box (no motion model: at native fps an object's
box overlaps its last one); a track takes detections while its last one is at most ``--gap`` s
old (default 1 s: missed frames up to then are detector flicker, not the object leaving; 1 s is
also the timing tolerance, so an end and a restart within it could not be told from one presence
anyway). A track is a *continuous presence* when it spans >= 1 s (first to last detection), is
detected on at least ``--density`` (0.5) of the frames of that span, and its median score is at
least ``--score`` (default: ``events.min_score``, the bar the events layer is documented to set:
an object the detector only ever sees below it is by design not an event). Tracks >= 1 s that
fail the last two are *weak*: counted and shown, not held against edged.

edged. The shipped int8 model (``Detector``; the daemon's default detection settings through
``edged.pipeline.worker.detect_params(DetectionConfig())``) feeds an ``EventTracker`` built as
the daemon builds it from ``EventsConfig()`` (no zones, no masks), boxes divided by the frame
size, labels from the model's labels, at each rate of ``--rates``: ``native`` (every frame) or N
fps (every round(fps/N)-th frame). Time = frame index / clip fps. Two feeds: the whole clip as one
stream (cuts included: what ``edged run`` on the file does), and each shot as its own stream
(``close_all`` at a cut, a new tracker: what fixed cameras see). At the end of a stream
``close_all`` ends what is open. An end's time is the object's last sighting on both sides (an
event's ``last_ts``; a presence's last reference frame), so an object still there when the clip
or shot ends is censored the same way on both.

Matching. On every frame edged processed, the boxes of the edged tracks that became events and
of all reference tracks (any length) of the same label are paired greedily one-to-one at IoU >=
0.5. Each event belongs to the reference track it is paired with on the most frames; an event
paired with none on any frame is spurious. Per presence: 1 event (one), more (frag), none (miss).
For a presence with exactly one event: start error = event start (its first sighting,
``start_ts``) - presence start; end error = event end - presence end. Confirmation latency = time
of the frame whose update returned the ``start`` - ``start_ts``.

Targets (the issue): every presence gives exactly one event, |start error| and |end error| <=
1 s, spurious events <= 1 per minute of video. Prints PASS/MISS; it does not assert.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged import sidecar  # noqa: E402
from edged.config import DetectionConfig, EventsConfig  # noqa: E402
from edged.core.nms import iou_matrix  # noqa: E402
from edged.core.preprocess import letterbox, letterbox_geometry  # noqa: E402
from edged.core.track import Change, EventTracker, greedy_match  # noqa: E402
from edged.core.types import Detections  # noqa: E402
from edged.engine.detector import Detector  # noqa: E402
from edged.export.assets import fetch  # noqa: E402
from edged.models import DEFAULT_MODEL  # noqa: E402
from edged.pipeline.events import label_rules, rules  # noqa: E402
from edged.pipeline.worker import detect_params  # noqa: E402

CLIPS = ("bikes", "carphone_pristine", "bigbuckbunny")
NET = 416
CUT_LEVELS = 30.0  # mean |Δ grey| between 64x36 thumbnails that starts a new shot
LINK_IOU = 0.3
PRESENCE_S = 1.0
MATCH_IOU = 0.5
TOL_S = 1.0
SPURIOUS_PER_MIN = 1.0


@dataclass
class Clip:
    name: str
    fps: float
    width: int
    height: int
    frames: int
    cuts: list[int]  # frames that start a new shot (0 excluded)
    ref: list[Detections]  # float darknet via OpenCV, per frame, pixels
    ours: list[Detections]  # shipped int8 via Detector, per frame, pixels

    @property
    def minutes(self) -> float:
        return self.frames / self.fps / 60


@dataclass
class Track:
    """A reference track or an edged track: label, box (normalized) and score per frame."""

    label: str
    boxes: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return min(self.boxes)

    @property
    def last(self) -> int:
        return max(self.boxes)

    def add(self, frame: int, box: np.ndarray, score: float) -> None:
        self.boxes[frame] = box
        self.scores[frame] = score


@dataclass(frozen=True)
class Presence:
    """What makes a reference track a continuous presence (see the module doc)."""

    fps: float
    density: float
    score: float

    def long(self, t: Track) -> bool:
        return (t.last - t.first) / self.fps >= PRESENCE_S

    def strong(self, t: Track) -> bool:
        return (len(t.boxes) / (t.last - t.first + 1) >= self.density
                and statistics.median(t.scores.values()) >= self.score)


@dataclass
class Event:
    label: str
    start_ts: float
    confirmed_at: float  # time of the frame whose update returned the start
    end_ts: float = float("nan")  # last sighting


# --- reference -------------------------------------------------------------------------------

def reference(net: cv2.dnn.Net, frame: np.ndarray, conf: float, iou: float) -> Detections:
    """Float yolov3-tiny through OpenCV's darknet reader on the letterboxed frame (pixels)."""
    lb, _ = letterbox(frame, NET, NET, 127, swap_rb=True)
    net.setInput(cv2.dnn.blobFromImage(lb, 1 / 255.0))  # already RGB 416x416: NCHW, /255
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    cls = rows[:, 5:].argmax(axis=1)
    score = rows[np.arange(len(rows)), 5 + cls]
    m = score >= conf
    rows, cls, score = rows[m], cls[m], score[m]
    xywh = np.stack([(rows[:, 0] - rows[:, 2] / 2) * NET, (rows[:, 1] - rows[:, 3] / 2) * NET,
                     rows[:, 2] * NET, rows[:, 3] * NET], axis=1)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), score.tolist(), cls.tolist(),
                                              conf, iou), int).reshape(-1)
    xyxy = np.concatenate([xywh[keep, :2], xywh[keep, :2] + xywh[keep, 2:]], axis=1)
    g = letterbox_geometry(frame.shape[1], frame.shape[0], NET, NET)
    return Detections(g.to_source(xyxy.astype(np.float32)), score[keep].astype(np.float32),
                      cls[keep].astype(np.int32))


def normalized(d: Detections, w: int, h: int) -> np.ndarray:
    out: np.ndarray = d.boxes.astype(np.float64) / np.array([w, h, w, h])
    return out


def link(clip: Clip, labels: Sequence[str], gap_s: float) -> list[Track]:
    """Reference detections -> reference tracks (see the module doc)."""
    gap = gap_s * clip.fps + 1e-6  # frames
    done: list[Track] = []
    active: list[Track] = []
    cuts = set(clip.cuts)
    for f, d in enumerate(clip.ref):
        if f in cuts:
            done += active
            active = []
        done += [t for t in active if f - t.last > gap]
        active = [t for t in active if f - t.last <= gap]
        boxes = normalized(d, clip.width, clip.height)
        scores = d.scores.tolist()
        names = [labels[c] for c in d.class_ids.tolist()]
        for label in sorted(set(names)):
            di = [j for j, n in enumerate(names) if n == label]
            ti = [k for k, t in enumerate(active) if t.label == label]
            taken: set[int] = set()
            if ti:
                last = np.stack([active[k].boxes[active[k].last] for k in ti])
                r, c = greedy_match(iou_matrix(last, boxes[di]), LINK_IOU)
                for a, b in zip(r.tolist(), c.tolist(), strict=True):
                    active[ti[a]].add(f, boxes[di[b]], scores[di[b]])
                    taken.add(b)
            for b, j in enumerate(di):
                if b not in taken:
                    t = Track(label)
                    t.add(f, boxes[j], scores[j])
                    active.append(t)
    return done + active


# --- edged -----------------------------------------------------------------------------------

def make_tracker(cfg: EventsConfig) -> EventTracker:
    """A camera's event layer as ``edged.pipeline.events.CameraEvents`` builds it (no zones,
    no masks)."""
    return EventTracker(default=rules(cfg), rules=label_rules(cfg), anchor=cfg.anchor)


def run_edged(clip: Clip, labels: Sequence[str], step: int, cfg: EventsConfig,
              per_shot: bool) -> tuple[list[Event], list[Track]]:
    """edged's detections of every ``step``-th frame through ``make_tracker`` trackers (a new
    one at each cut with ``per_shot``): the events, and the track behind each (same order)."""
    events: list[Event] = []
    tracks: list[Track] = []
    ev = make_tracker(cfg)
    mine: dict[int, Track] = {}  # this tracker's tracks by id
    index: dict[int, int] = {}  # this tracker's track id -> index in events

    def apply(ts: float, changes: list[Change]) -> None:
        for ch in changes:
            if ch.kind == "start":
                index[ch.track_id] = len(events)
                events.append(Event(str(ch.label), ch.start_ts, ts))
                tracks.append(mine[ch.track_id])
            elif ch.kind == "end":
                events[index[ch.track_id]].end_ts = ch.last_ts

    cuts = set(clip.cuts) if per_shot else set()
    ts = 0.0
    for f in range(clip.frames):
        if f in cuts:
            apply(ts, ev.close_all(f / clip.fps, "cut"))
            ev, mine, index = make_tracker(cfg), {}, {}
        if f % step:
            continue
        ts = f / clip.fps
        d = clip.ours[f]
        names = [labels[c] if 0 <= c < len(labels) else str(c) for c in d.class_ids.tolist()]
        changes = ev.update(ts, normalized(d, clip.width, clip.height), d.scores, names)
        c = ev.tracker.cols  # the tracks seen in this frame: "det" is their detection's index
        for row in np.flatnonzero(c["det"] >= 0).tolist():
            tid = int(c["id"][row])
            t = mine.setdefault(tid, Track(str(ev.tracker.labels[int(c["label"][row])])))
            t.add(f, c["box"][row].copy(), float(c["score"][row]))
        apply(ts, changes)
    apply(ts, ev.close_all(clip.frames / clip.fps, "end of clip"))
    return events, tracks


# --- matching --------------------------------------------------------------------------------

def attribute(ref: list[Track], tracks: list[Track], frames: Sequence[int]) -> list[int]:
    """Per event (its track): the reference track it is paired with on the most frames (the
    earliest of a tie), -1 if none."""
    counts: list[dict[int, int]] = [{} for _ in tracks]
    for f in frames:
        for label in {t.label for t in tracks}:
            ours = [i for i, t in enumerate(tracks) if t.label == label and f in t.boxes]
            theirs = [k for k, t in enumerate(ref) if t.label == label and f in t.boxes]
            if not ours or not theirs:
                continue
            r, c = greedy_match(iou_matrix(np.stack([tracks[i].boxes[f] for i in ours]),
                                           np.stack([ref[k].boxes[f] for k in theirs])),
                                MATCH_IOU)
            for a, b in zip(r.tolist(), c.tolist(), strict=True):
                n = counts[ours[a]]
                n[theirs[b]] = n.get(theirs[b], 0) + 1
    return [max(n, key=lambda k: (n[k], -ref[k].first)) if n else -1 for n in counts]


@dataclass
class Row:
    clip: str
    rate: str  # the --rates entry
    fps: float
    minutes: float
    presences: int = 0
    one: int = 0
    fragmented: int = 0
    missed: int = 0
    within: int = 0  # presences with one event, start and end within TOL_S
    start_err: list[float] = field(default_factory=list)
    end_err: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    events: int = 0
    spurious: int = 0
    weak: int = 0
    weak_with_event: int = 0
    details: list[str] = field(default_factory=list)
    bad: bool = False  # something in details misses a target


def evaluate(clip: Clip, ref: list[Track], pres: Presence, rate: str, step: int,
             labels: Sequence[str], cfg: EventsConfig, per_shot: bool) -> Row:
    events, tracks = run_edged(clip, labels, step, cfg, per_shot)
    owner = attribute(ref, tracks, range(0, clip.frames, step))
    fps = clip.fps
    row = Row(clip.name, rate, fps / step, clip.minutes, events=len(events))
    for k, p in enumerate(ref):
        if not pres.long(p):
            continue
        strong = pres.strong(p)
        hits = sorted((i for i, o in enumerate(owner) if o == k),
                      key=lambda i: events[i].start_ts)
        p0, p1 = p.first / fps, p.last / fps
        desc = ", ".join(f"[{events[i].start_ts:5.2f}, {events[i].end_ts:5.2f}]"
                         for i in hits) or "none"
        if not strong:
            row.weak += 1
            row.weak_with_event += bool(hits)
            verdict = "(weak: not counted)"
        elif len(hits) == 1:
            e = events[hits[0]]
            row.presences += 1
            row.one += 1
            se, ee = e.start_ts - p0, e.end_ts - p1
            row.start_err.append(abs(se))
            row.end_err.append(abs(ee))
            ok = abs(se) <= TOL_S and abs(ee) <= TOL_S
            row.within += ok
            row.bad |= not ok
            verdict = (f"start {se:+5.2f} end {ee:+5.2f} s{'' if ok else ' OFF'}, confirmed "
                       f"+{e.confirmed_at - e.start_ts:4.2f} s")
        else:
            row.presences += 1
            row.fragmented += len(hits) > 1
            row.missed += not hits
            row.bad = True
            verdict = "FRAGMENTED" if hits else "MISSED"
        density = len(p.boxes) / (p.last - p.first + 1)
        row.details.append(f"    {p.label:<8} ref [{p0:5.2f}, {p1:5.2f}] seen {density:4.0%} "
                           f"median {statistics.median(p.scores.values()):.2f}; events "
                           f"{desc}  {verdict}")
    for i, e in enumerate(events):
        row.latency.append(e.confirmed_at - e.start_ts)
        if owner[i] < 0:
            row.spurious += 1
            row.bad = True
            row.details.append(f"    {e.label:<8} SPURIOUS event [{e.start_ts:5.2f}, "
                               f"{e.end_ts:5.2f}] ({len(tracks[i].boxes)} sightings)")
    return row


# --- main ------------------------------------------------------------------------------------

def load(path: Path, net: cv2.dnn.Net, det: Detector) -> Clip:
    """Every frame of the clip through both detectors, and its cuts."""
    dcfg = DetectionConfig()
    params = detect_params(dcfg, det.spec.labels)
    cap = cv2.VideoCapture(str(path))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    ref: list[Detections] = []
    ours: list[Detections] = []
    cuts: list[int] = []
    prev: np.ndarray | None = None
    w = h = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        thumb = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (64, 36),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
        if prev is not None and float(np.abs(thumb - prev).mean()) >= CUT_LEVELS:
            cuts.append(len(ref))
        prev = thumb
        ref.append(reference(net, frame, dcfg.conf_threshold, dcfg.iou_threshold))
        ours.append(det.detect(frame, params))
    cap.release()
    if not ref or fps <= 0:
        raise SystemExit(f"{path}: no frames or no frame rate")
    return Clip(path.stem, fps, w, h, len(ref), cuts, ref, ours)


def table(rows: list[Row]) -> None:
    print(f"{'clip':<18} {'rate':>6} {'fps':>5} {'pres':>4} {'one':>4} {'frag':>4} "
          f"{'miss':>4} {'≤1s':>4} {'max|Δstart|':>11} {'max|Δend|':>9} "
          f"{'confirm p50/max':>15} {'events':>6} {'spur':>4} {'spur/min':>8} {'weak':>6}")
    for r in rows:
        lat = (f"{statistics.median(r.latency):4.2f}/{max(r.latency):4.2f}" if r.latency
               else "-")
        smax = f"{max(r.start_err):5.2f}" if r.start_err else "-"
        emax = f"{max(r.end_err):5.2f}" if r.end_err else "-"
        print(f"{r.clip:<18} {r.rate:>6} {r.fps:5.2f} {r.presences:4d} {r.one:4d} "
              f"{r.fragmented:4d} {r.missed:4d} {r.within:4d} {smax:>11} {emax:>9} {lat:>15} "
              f"{r.events:6d} {r.spurious:4d} {r.spurious / r.minutes:8.1f} "
              f"{f'{r.weak_with_event}/{r.weak}':>6}")


def verdicts(rows: list[Row], rates: Sequence[str]) -> None:
    for rate in rates:
        sel = [r for r in rows if r.rate == rate]
        pres = sum(r.presences for r in sel)
        one = sum(r.one for r in sel)
        within = sum(r.within for r in sel)
        spur = sum(r.spurious for r in sel)
        minutes = sum(r.minutes for r in sel)
        print(f"  {rate:>6}: one event per presence {one}/{pres} "
              f"{'PASS' if one == pres else 'MISS'}; start and end within {TOL_S:g} s "
              f"{within}/{pres} {'PASS' if within == pres else 'MISS'}; spurious {spur} in "
              f"{minutes * 60:.1f} s = {spur / minutes:.1f}/min "
              f"{'PASS' if spur / minutes <= SPURIOUS_PER_MIN else 'MISS'} "
              f"(≤ {SPURIOUS_PER_MIN:g}/min)")


VTEST_SHA256 = "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"
VTEST_IN_DEB = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"


def fetch_vtest(assets: Path) -> Path:
    """OpenCV's vtest.avi (768x576, 10 fps, 795 frames: people walking past each other in a
    fixed camera's view) from Debian's ``opencv-doc`` package (apt-get download: no root, no
    install), checked by its SHA-256 and kept in ASSETS/videos."""
    out = assets / "videos" / "vtest.avi"
    if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == VTEST_SHA256:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        (deb,) = Path(tmp).glob("opencv-doc_*.deb")
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                             capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            member = tf.extractfile(VTEST_IN_DEB)
            if member is None:
                raise SystemExit(f"{deb.name} has no {VTEST_IN_DEB}")
            data = member.read()
    if hashlib.sha256(data).hexdigest() != VTEST_SHA256:
        raise SystemExit(f"vtest.avi from {deb.name}: unexpected SHA-256")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def main() -> int:
    ecfg, dcfg = EventsConfig(), DetectionConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path, default=REPO / ".assets")
    ap.add_argument("--clips", default=",".join(CLIPS),
                    help="registry clips of edged.export.assets (comma-separated; '' for none)")
    ap.add_argument("--video", type=Path, action="append", default=[],
                    help="another clip (repeatable)")
    ap.add_argument("--vtest", action="store_true",
                    help="also OpenCV's vtest.avi (pedestrians, a fixed camera, 80 s), fetched "
                    "once from Debian's opencv-doc package into ASSETS/videos")
    ap.add_argument("--rates", default="native,10,5",
                    help="inference rates: 'native' (every frame) or frames per second")
    ap.add_argument("--gap", type=float, default=1.0,
                    help="longest detection gap (s) a reference presence bridges")
    ap.add_argument("--density", type=float, default=0.5,
                    help="a presence is detected on at least this share of its frames")
    ap.add_argument("--score", type=float, default=ecfg.min_score,
                    help="a presence's median reference score is at least this "
                    "(default: events.min_score)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="list every presence, not only the ones missing a target")
    args = ap.parse_args()
    t_start = time.perf_counter()
    assets = fetch(args.assets)
    spec = sidecar.load(DEFAULT_MODEL)
    path = spec.variant_path("cpu")
    if path is None:
        raise SystemExit(f"{DEFAULT_MODEL}: no cpu variant")
    det = Detector(spec, path, args.threads)
    cv2.setNumThreads(args.threads)
    net = cv2.dnn.readNetFromDarknet(str(assets.cfg), str(assets.weights))
    labels = list(spec.labels)
    if assets.names.read_text().split("\n")[:len(labels)] != labels:
        raise SystemExit("coco.names and the shipped model's labels differ")
    rates = args.rates.split(",")
    print(f"edged {spec.name} int8 (conf {dcfg.conf_threshold}, NMS {dcfg.iou_threshold}) vs "
          f"OpenCV {cv2.__version__} darknet float, letterbox {NET}")
    print(f"events: {rules(ecfg)}")
    print(f"presence: per label and shot, IoU ≥ {LINK_IOU} with the last box, gaps ≤ "
          f"{args.gap:g} s bridged, ≥ {PRESENCE_S:g} s, seen on ≥ {args.density:.0%} of its "
          f"frames, median score ≥ {args.score:g} (else weak); events belong to the reference "
          f"track they pair with (IoU ≥ {MATCH_IOU}) on most frames")
    rows: dict[bool, list[Row]] = {False: [], True: []}
    videos = [assets.video(n) for n in args.clips.split(",") if n] + args.video
    if args.vtest:
        videos.append(fetch_vtest(args.assets))
    for video in videos:
        name = video.stem
        t0 = time.perf_counter()
        clip = load(video, net, det)
        ref = link(clip, labels, args.gap)
        pres = Presence(clip.fps, args.density, args.score)
        n = sum(pres.long(t) and pres.strong(t) for t in ref)
        weak = sum(pres.long(t) and not pres.strong(t) for t in ref)
        cuts = f" (cuts at {[round(c / clip.fps, 2) for c in clip.cuts]} s)" if clip.cuts else ""
        print(f"\n{name}: {clip.frames} frames, {clip.fps:.2f} fps, {clip.width}x{clip.height}, "
              f"{clip.frames / clip.fps:.1f} s, {len(clip.cuts) + 1} shot(s){cuts}; "
              f"{len(ref)} reference tracks, {n} presences, {weak} weak "
              f"({time.perf_counter() - t0:.1f} s to detect)")
        for per_shot in (False, True) if clip.cuts else (False,):
            for rate in rates:
                step = 1 if rate == "native" else max(1, round(clip.fps / float(rate)))
                row = evaluate(clip, ref, pres, rate, step, labels, ecfg, per_shot)
                rows[per_shot].append(row)
                if not clip.cuts:
                    rows[True].append(row)  # one shot: the same feed
                if args.verbose or row.bad:
                    feed = "each shot its own stream" if per_shot else "one stream"
                    print(f"  {feed}, {rate} ({row.fps:.2f} fps, every {step}):")
                    print("\n".join(row.details))
    for per_shot in (False, True):
        title = ("Each shot its own stream (at a cut: close_all, a new tracker)" if per_shot
                 else "Each clip one stream, cuts included")
        print(f"\n{title}  (weak: weak presences with an event / weak presences)")
        table(rows[per_shot])
        verdicts(rows[per_shot], rates)
    print(f"\n{time.perf_counter() - t_start:.1f} s in all")
    return 0  # informative: a MISS is printed, never an exit status


if __name__ == "__main__":
    raise SystemExit(main())
