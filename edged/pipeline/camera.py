"""One camera of the daemon: its capture thread, its latest-frame slot, its counters and the
state of its source. The daemon holds one per configured camera; they share the inference worker
(through the worker's :class:`~edged.pipeline.worker.Lane`) and the publisher, nothing else, so a
camera that fails, stalls or is reconfigured never touches the others."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edged.config import CameraConfig
from edged.engine.detector import DetectParams
from edged.pipeline.capture import CaptureThread
from edged.pipeline.events import CameraEvents
from edged.pipeline.slot import LatestFrameSlot
from edged.pipeline.stats import PipelineStats
from edged.pipeline.worker import Lane

logger = logging.getLogger(__name__)

NO_FRAME_YET = "opening the source: no frame yet"


class Camera:
    """``frames``: the condition every camera's slot shares with the worker; ``on_change(cam)``
    is called (from the capture thread) when the source goes up or down."""

    def __init__(self, cfg: CameraConfig, frames: threading.Condition,
                 on_change: Callable[[Camera], None]) -> None:
        self.cfg = cfg
        self.stats = PipelineStats()  # since the camera was added, across capture restarts
        self._frames = frames
        self._on_change = on_change
        self.slot = LatestFrameSlot(self.stats, frames)
        self.capture: CaptureThread | None = None
        # Until the first frame the source is not known to work: down, with this reason,
        # never "running" with 0 frames while a camera takes its time.
        self.source_reason: str | None = NO_FRAME_YET
        self._base_reconnects = 0  # reconnects of the captures replaced by reloads
        self.events: CameraEvents | None = None  # set by the daemon (events on)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def reconnects(self) -> int:
        cap = self.capture
        return self._base_reconnects + (cap.reconnects if cap else 0)

    def lane(self, params: DetectParams) -> Lane:
        return Lane(self.name, self.slot, params, self.stats, self.cfg.weight, self.events)

    def start(self) -> None:
        """Start a capture thread (the first, or one after :meth:`stop_capture`)."""
        self.source_reason = NO_FRAME_YET
        cap = CaptureThread(self.cfg, self.slot,
                            lambda up, reason: self._on_source(cap, up, reason))
        self.capture = cap
        cap.start()

    def _on_source(self, cap: CaptureThread, up: bool, reason: str) -> None:
        if cap is not self.capture:
            return  # a replaced capture still finishing a read
        self.source_reason = None if up else reason
        self._on_change(self)

    def stop(self) -> None:
        if self.capture is not None:
            self.capture.stop()

    def join(self, timeout_s: float) -> bool:
        return self.capture is None or self.capture.join(timeout_s)

    def stop_capture(self, join_s: float) -> None:
        """Stop the capture for a new one (:meth:`start`) with a new slot: the old thread may
        still be inside a blocking read; whatever it still produces goes to a slot nobody
        reads (never two captures feeding one camera)."""
        old = self.capture
        if old is not None:
            old.stop()
            if not old.join(join_s):
                logger.warning("%s: the old capture thread is still in a read; it is abandoned",
                               self.name)
            self._base_reconnects += old.reconnects
        self.capture = None
        self.slot = LatestFrameSlot(self.stats, self._frames)
