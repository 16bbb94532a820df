"""The inference worker: newest frame → preprocess → invoke → decode+NMS → det message.

The engine and the detection parameters can be swapped at any time (SIGHUP); the swap takes
effect at the next frame boundary, so the stream is never interrupted. What a reload can change
is one immutable :class:`WorkerSettings`, replaced whole by a single attribute assignment and
read once per frame: the frame loop takes no lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edged.api.messages import DetMessage, FrameSize, Latency, Message, detections_of
from edged.config import DetectionConfig
from edged.core.types import Detections
from edged.engine.detector import Detector, DetectParams
from edged.engine.engine import Engine
from edged.errors import EdgedError
from edged.pipeline.events import CameraEvents
from edged.pipeline.slot import Frame, LatestFrameSlot
from edged.pipeline.stage import StageThread
from edged.pipeline.stats import PipelineStats

logger = logging.getLogger(__name__)


def detect_params(cfg: DetectionConfig, labels: Sequence[str]) -> DetectParams:
    """Config (labels) → engine parameters (class ids). Labels were validated by the config."""
    index = {label: i for i, label in enumerate(labels)}
    return DetectParams(
        conf_threshold=cfg.conf_threshold, iou_threshold=cfg.iou_threshold,
        max_detections=cfg.max_detections,
        class_thresholds={index[k]: v for k, v in cfg.class_thresholds.items() if k in index},
        allowed_classes=frozenset(index[k] for k in cfg.classes if k in index)
        if cfg.classes is not None else None,
        min_box_area=cfg.min_box_area)


@dataclass(frozen=True)
class Lane:
    """One camera as the worker sees it: where its frames come from, how they are filtered,
    where they are counted."""

    camera: str
    slot: LatestFrameSlot  # a new one per new capture (the old thread may still be in a read)
    params: DetectParams
    stats: PipelineStats
    weight: int = 1
    events: CameraEvents | None = None  # its event layer (None: events off)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker uses for a frame that only a reload changes."""

    engine: Engine
    lanes: tuple[Lane, ...]
    publish: Callable[[Message], None]
    empty_frames: bool  # publish frames without detections too
    asked_params: DetectParams = field(default_factory=DetectParams)  # for asked images


@dataclass(eq=False)
class Asked:
    """An image another process asked about (Frigate's detector): served before any camera's
    frame, so its answer waits for at most the frame being inferred when it arrived."""

    image: np.ndarray  # (H, W, 3) uint8 BGR
    done: threading.Event = field(default_factory=threading.Event)
    dets: Detections | None = None  # in the image's pixels
    error: str | None = None
    cancelled: bool = False  # the asker gave up: skipped if not started


Recheck = Callable[[Engine], "Engine | None"]  # engine.recheck with the running settings

CREDIT_BOUND = 1000  # keeps the credits bounded whatever the readiness pattern


class WeightedRoundRobin:
    """Smooth weighted round-robin (as nginx balances upstreams) over the cameras that have a
    fresh frame: with equal weights they take turns; a camera of weight 2 gets two frames for
    every one of a camera of weight 1, interleaved; a camera without a frame neither saves up
    credit for a burst later nor keeps a debt that would make its next frame wait (a camera
    slower than its share is served as soon as its frame is there, after at most one turn of
    each other camera)."""

    def __init__(self) -> None:
        self._credit: dict[str, int] = {}  # camera -> credit

    def pick(self, ready: Sequence[Lane]) -> Lane:
        credit = self._credit
        names = {x.camera for x in ready}
        for name in [n for n, c in credit.items() if n not in names and c < 0]:
            del credit[name]  # a camera without a frame carries no debt: it was not served
        if len(ready) == 1:
            return ready[0]
        total = sum(x.weight for x in ready)
        for x in ready:
            credit[x.camera] = min(credit.get(x.camera, 0) + x.weight, CREDIT_BOUND)
        lane = max(ready, key=lambda x: credit[x.camera])  # ties: the first listed
        credit[lane.camera] = max(credit[lane.camera] - total, -CREDIT_BOUND)
        return lane


class InferenceWorker(StageThread):
    """One thread, one engine, every camera: it takes the next frame from the cameras that
    have a fresh one, in :class:`WeightedRoundRobin` turns."""

    def __init__(self, engine: Engine, lanes: Sequence[Lane],
                 publish: Callable[[Message], None], stats: PipelineStats,
                 frames: threading.Condition, empty_frames: bool = True,
                 asked_params: DetectParams | None = None,
                 recheck: Recheck | None = None, recheck_every_s: float = 0.0) -> None:
        """``recheck`` (every ``recheck_every_s``, between frames, on an accelerator engine):
        the self-check again; a CPU engine it returns replaces the running one, and
        ``on_engine`` (set by the owner) hears of it."""
        # A daemon thread, against our own rule, for the capture thread's reason: an invoke
        # stuck inside a wedged accelerator driver cannot be interrupted, and must not hold the
        # process past a bounded SIGTERM stop (the service joins this thread with a timeout;
        # the systemd watchdog catches the stuck invoke before that).
        super().__init__("edged-inference", daemon=True)
        self._settings = WorkerSettings(engine, tuple(lanes), publish, empty_frames,
                                        asked_params or DetectParams())
        self._stats = stats  # every camera's frames (the process status)
        self._frames = frames  # the condition every lane's slot notifies
        self._swap_lock = threading.Lock()  # between writers only; the frame loop never takes it
        self._seqs: dict[str, int] = {}  # camera -> next det seq (kept across reloads)
        self._turns = WeightedRoundRobin()
        self._asked = deque[Asked]()  # under self._frames
        # Engines replaced by update(), closed by this thread between frames (never under a
        # running invoke). deque: append and popleft are atomic.
        self._retired = deque[Engine]()
        self.busy_since_mono: float | None = None  # set while a frame is processed (watchdog)
        self._recheck = recheck
        self._recheck_every_s = 0.0
        self._next_check = 0.0
        self.recheck_every(recheck_every_s)
        self.on_engine: Callable[[Engine, Engine], None] | None = None  # (old, new)
        self.error: BaseException | None = None

    @property
    def settings(self) -> WorkerSettings:
        return self._settings

    @property
    def engine(self) -> Engine:
        return self._settings.engine

    def _replace(self, **changes: object) -> WorkerSettings:
        """Swap in new settings (one assignment: the worker sees the old or the new object)."""
        with self._swap_lock:
            old = self._settings
            self._settings = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
            return old

    def ask(self, image: np.ndarray) -> Asked:
        """Queue ``image`` ahead of every camera; its ``done`` is set once answered."""
        asked = Asked(image)
        with self._frames:
            self._asked.append(asked)
            self._frames.notify_all()
        return asked

    def update(self, lanes: Sequence[Lane], empty_frames: bool,
               engine: Engine | None = None, asked_params: DetectParams | None = None) -> None:
        """Serve these cameras (with ``engine``, if given) from the next frame on, all in one
        swap. A replaced engine is closed by this thread after its last frame (never under a
        running invoke); a capture thread that has not ended yet keeps filling its old slot,
        which nobody reads."""
        changes: dict[str, object] = {"lanes": tuple(lanes), "empty_frames": empty_frames}
        if engine is not None:
            changes["engine"] = engine
        if asked_params is not None:
            changes["asked_params"] = asked_params
        old = self._replace(**changes)
        if engine is not None and old.engine is not engine:
            self._retired.append(old.engine)  # only once no new frame can pick it up
            self._next_check = time.monotonic() + self._recheck_every_s  # checked at load
        with self._frames:
            self._frames.notify_all()  # a wait for the old lanes ends now

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                while self._retired:  # before the settings are read: never a retired engine
                    self._retired.popleft().close()
                s = self._settings  # once per frame: a swap while waiting applies to the next
                if self._recheck_every_s > 0 and time.monotonic() >= self._next_check:
                    self._check_again(s.engine)
                    continue
                picked = self._next(s.lanes)
                if isinstance(picked, Asked):
                    self._answer(picked, s)
                elif picked is not None:
                    self._infer(*picked, s)
        except EdgedError as e:  # one we say in a line (the accelerator required, and wrong)
            logger.error("inference stopped: %s", e)
            self.error = e
        except BaseException as e:  # surfaced by the service, which stops with exit 1
            logger.exception("inference worker failed")
            self.error = e

    def _next(self, lanes: tuple[Lane, ...]) -> Asked | tuple[Lane, Frame] | None:
        """An image asked about, else the next camera's frame, or None after waiting up to
        0.1 s for either."""
        with self._frames:
            while self._asked:
                asked = self._asked.popleft()
                if not asked.cancelled:
                    return asked
            ready = [lane for lane in lanes if lane.slot.ready]
            if not ready:
                self._frames.wait(0.1)
                return None
            lane = self._turns.pick(ready)
            frame = lane.slot.take()
        assert frame is not None  # ready, under the condition every put() takes
        return lane, frame

    def _detect(self, det: Detector, image: np.ndarray,
                params: DetectParams) -> tuple[Detections, Latency]:
        """One image through the detector, each stage timed; busy (the watchdog's) meanwhile."""
        self.busy_since_mono = time.monotonic()
        try:
            t0 = time.perf_counter()
            geom = det.preprocess(image)
            t1 = time.perf_counter()
            det.invoke()
            t2 = time.perf_counter()
            dets = det.postprocess(geom, params)
            t3 = time.perf_counter()
        finally:
            self.busy_since_mono = None
        return dets, Latency(round((t1 - t0) * 1e3, 3), round((t2 - t1) * 1e3, 3),
                             round((t3 - t2) * 1e3, 3), round((t3 - t0) * 1e3, 3))

    def _infer(self, lane: Lane, frame: Frame, s: WorkerSettings) -> None:
        det = s.engine.detector
        dets, lat = self._detect(det, frame.image, lane.params)
        lane.stats.record(lat)
        self._stats.record(lat)
        h, w = frame.image.shape[:2]
        if lane.events is not None:  # every frame: a frame without the object counts too
            lane.events.on_frame(frame, dets, det.spec.labels, w, h)
        if not len(dets) and not s.empty_frames:
            return
        seq = self._seqs.get(lane.camera, 0)
        s.publish(DetMessage(
            lane.camera, seq, frame.seq, frame.ts_ns, FrameSize(w, h),
            s.engine.model_name, s.engine.backend, lat,
            detections_of(dets, det.spec.labels, w, h)))
        self._seqs[lane.camera] = seq + 1

    def recheck_every(self, seconds: float) -> None:
        """The periodic self-check's interval (0: off), counted from now (a reload)."""
        self._recheck_every_s = seconds if self._recheck is not None else 0.0
        self._next_check = time.monotonic() + seconds

    def _check_again(self, engine: Engine) -> None:
        """The periodic self-check, on this thread (it owns the detector). An exception
        (AcceleratorUnavailable: the accelerator is required) ends the worker like a failed
        frame does; the service stops with its exit code."""
        assert self._recheck is not None
        self._next_check = time.monotonic() + self._recheck_every_s
        if engine.backend == "cpu":
            return
        self.busy_since_mono = time.monotonic()  # a hang in the check is the watchdog's case
        try:
            new = self._recheck(engine)
        finally:
            self.busy_since_mono = None
        if new is None:
            return
        with self._swap_lock:  # only if a reload has not replaced the engine meanwhile
            swapped = self._settings.engine is engine
            if swapped:
                self._settings = dataclasses.replace(self._settings, engine=new)
        if not swapped:
            new.close()
            return
        engine.close()  # this thread, between frames
        if self.on_engine is not None:
            self.on_engine(engine, new)

    def _answer(self, asked: Asked, s: WorkerSettings) -> None:
        try:
            asked.dets, lat = self._detect(s.engine.detector, asked.image, s.asked_params)
            self._stats.asked(lat)
        except ValueError as e:  # an image the letterbox refuses (checked before: a bug)
            asked.error = f"cannot infer this image: {e}"
        finally:
            asked.done.set()
