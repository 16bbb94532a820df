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
from dataclasses import dataclass

from edged.api.messages import DetMessage, FrameSize, Latency, detections_of
from edged.config import DetectionConfig
from edged.engine.detector import DetectParams
from edged.engine.engine import Engine
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
class WorkerSettings:
    """Everything the worker uses for a frame that only a reload changes."""

    engine: Engine
    slot: LatestFrameSlot  # where frames come from (a new one per new capture)
    params: DetectParams
    publish: Callable[[DetMessage], None]
    camera: str
    empty_frames: bool  # publish frames without detections too


class InferenceWorker(StageThread):
    def __init__(self, engine: Engine, slot: LatestFrameSlot, params: DetectParams,
                 publish: Callable[[DetMessage], None], stats: PipelineStats, camera: str,
                 empty_frames: bool = True) -> None:
        # A daemon thread, against our own rule, for the capture thread's reason: an invoke
        # stuck inside a wedged accelerator driver cannot be interrupted, and must not hold the
        # process past a bounded SIGTERM stop (the service joins this thread with a timeout;
        # the systemd watchdog catches the stuck invoke before that).
        super().__init__("edged-inference", daemon=True)
        self._settings = WorkerSettings(engine, slot, params, publish, camera, empty_frames)
        self._stats = stats
        self._swap_lock = threading.Lock()  # between writers only; the frame loop never takes it
        self._seq = 0
        # Engines replaced by set_engine, closed by this thread between frames (never under a
        # running invoke). deque: append and popleft are atomic.
        self._retired = deque[Engine]()
        self.busy_since_mono: float | None = None  # set while a frame is processed (watchdog)
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

    def set_engine(self, engine: Engine) -> None:
        """Use ``engine`` from the next frame on; the replaced one is closed by this thread
        after its last frame (never under a running invoke)."""
        old = self._replace(engine=engine)
        if old.engine is not engine:  # retired only once no new frame can pick it up
            self._retired.append(old.engine)

    def set_slot(self, slot: LatestFrameSlot) -> None:
        """Take frames from ``slot`` from now on (a new capture after a reload): a capture
        thread that has not ended yet keeps filling its old slot, which nobody reads."""
        self._replace(slot=slot)

    def set_params(self, params: DetectParams, empty_frames: bool) -> None:
        self._replace(params=params, empty_frames=empty_frames)

    def set_output(self, publish: Callable[[DetMessage], None], camera: str) -> None:
        self._replace(publish=publish, camera=camera)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                while self._retired:  # before the settings are read: never a retired engine
                    self._retired.popleft().close()
                frame = self._settings.slot.get(0.1)
                if frame is None:
                    continue
                s = self._settings  # once per frame: a swap while waiting applies to it
                self._infer(frame, s)
        except BaseException as e:  # surfaced by the service, which stops with exit 1
            logger.exception("inference worker failed")
            self.error = e

    def _infer(self, frame: Frame, s: WorkerSettings) -> None:
        det = s.engine.detector
        self.busy_since_mono = time.monotonic()
        t0 = time.perf_counter()
        geom = det.preprocess(frame.image)
        t1 = time.perf_counter()
        det.invoke()
        t2 = time.perf_counter()
        dets = det.postprocess(geom, s.params)
        t3 = time.perf_counter()
        self.busy_since_mono = None
        lat = Latency(round((t1 - t0) * 1e3, 3), round((t2 - t1) * 1e3, 3),
                      round((t3 - t2) * 1e3, 3), round((t3 - t0) * 1e3, 3))
        self._stats.record(lat)
        if not len(dets) and not s.empty_frames:
            return
        h, w = frame.image.shape[:2]
        s.publish(DetMessage(
            s.camera, self._seq, frame.seq, frame.ts_ns, FrameSize(w, h),
            s.engine.model_name, s.engine.backend, lat,
            detections_of(dets, det.spec.labels, w, h)))
        self._seq += 1
