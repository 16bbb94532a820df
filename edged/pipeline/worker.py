"""The inference worker: newest frame → preprocess → invoke → decode+NMS → det message.

The engine and the detection parameters can be swapped at any time (SIGHUP); the swap takes
effect at the next frame boundary, so the stream is never interrupted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edged.api.messages import det_message, detection_dicts
from edged.config import DetectionConfig
from edged.engine.detector import DetectParams
from edged.engine.engine import Engine
from edged.pipeline.capture import LatestFrameSlot
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


class InferenceWorker(StageThread):
    def __init__(self, engine: Engine, slot: LatestFrameSlot, params: DetectParams,
                 publish: Callable[[dict[str, Any]], None], stats: PipelineStats, camera: str,
                 empty_frames: bool = True, hang_after: int | None = None) -> None:
        self._engine = engine
        self._params = params
        self._slot = slot
        self._publish = publish
        self._stats = stats
        self._camera = camera
        self._empty_frames = empty_frames
        super().__init__("edged-inference")
        self._lock = threading.Lock()
        self._seq = 0
        self._retired: list[Engine] = []
        self.busy_since_mono: float | None = None  # set while a frame is processed (watchdog)
        self.error: BaseException | None = None
        self._hang_after = hang_after  # test-only fault: block forever after N frames

    @property
    def engine(self) -> Engine:
        return self._engine

    def set_engine(self, engine: Engine) -> None:
        """Use ``engine`` from the next frame on; the replaced one is closed by this thread
        after its last frame (never under a running invoke)."""
        with self._lock:
            if self._engine is not engine:
                self._retired.append(self._engine)
            self._engine = engine

    def set_slot(self, slot: LatestFrameSlot) -> None:
        """Take frames from ``slot`` from now on (a new capture after a reload): a capture
        thread that has not ended yet keeps filling its old slot, which nobody reads."""
        with self._lock:
            self._slot = slot

    def set_params(self, params: DetectParams, empty_frames: bool) -> None:
        with self._lock:
            self._params = params
            self._empty_frames = empty_frames

    def set_output(self, publish: Callable[[dict[str, Any]], None], camera: str) -> None:
        with self._lock:
            self._publish = publish
            self._camera = camera

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    slot, retired, self._retired = self._slot, self._retired, []
                for old in retired:
                    old.close()
                frame = slot.get(0.1)
                if frame is None:
                    continue
                with self._lock:
                    engine, params, empty = self._engine, self._params, self._empty_frames
                    publish, camera = self._publish, self._camera
                det = engine.detector
                self.busy_since_mono = time.monotonic()
                if self._hang_after is not None and self._stats.frames_out >= self._hang_after:
                    logger.warning("test fault: inference hangs now (EDGED_TEST_FAULT)")
                    self._stop.wait()  # a stuck NPU driver, but one SIGTERM can still end
                    break
                t0 = time.perf_counter()
                geom = det.preprocess(frame.image)
                t1 = time.perf_counter()
                det.invoke()
                t2 = time.perf_counter()
                dets = det.postprocess(geom, params)
                t3 = time.perf_counter()
                self.busy_since_mono = None
                lat = {"preprocess": round((t1 - t0) * 1e3, 3),
                       "inference": round((t2 - t1) * 1e3, 3),
                       "postprocess": round((t3 - t2) * 1e3, 3),
                       "total": round((t3 - t0) * 1e3, 3)}
                self._stats.record(lat)
                if not len(dets) and not empty:
                    continue
                h, w = frame.image.shape[:2]
                publish(det_message(
                    camera=camera, seq=self._seq, frame_seq=frame.seq, ts_ns=frame.ts_ns,
                    width=w, height=h, model=engine.model_name, backend=engine.backend,
                    latency_ms=lat, detections=detection_dicts(dets, det.spec.labels, w, h)))
                self._seq += 1
        except BaseException as e:  # surfaced by the service, which stops with exit 1
            logger.exception("inference worker failed")
            self.error = e
