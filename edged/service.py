"""The daemon: builds the stages from the config, runs them, reloads on SIGHUP, stops on
SIGTERM/SIGINT. Startup order: publisher (bind, fail fast) → engine (load, warm up) → worker →
capture; shutdown is the reverse, bounded in time."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import cv2

from edged.capture import CaptureThread, LatestFrameSlot, SourceSpec
from edged.config import Config, default_config, load_config
from edged.errors import EXIT_OK, EXIT_RUNTIME, EdgedError
from edged.inference.engine import Engine, EngineConfig, open_engine
from edged.inference.worker import InferenceWorker, detect_params
from edged.log import CONTEXT
from edged.messages import status_message
from edged.publish import Publisher
from edged.sdnotify import Notifier
from edged.signals import PendingSignals
from edged.stats import PipelineStats

logger = logging.getLogger(__name__)

STOP_BUDGET_S = 1.5  # all joins together, so SIGTERM → exit well within 2 s
FAULT_ENV = "EDGED_TEST_FAULT"  # test-only: "hang_inference_after=N" (README, "Testing hooks")


def _test_fault_hang_after() -> int | None:
    raw = os.environ.get(FAULT_ENV, "")
    key, _, value = raw.partition("=")
    if key == "hang_inference_after" and value.isdigit():
        logger.warning("%s=%s is set: inference will hang after %s frames", FAULT_ENV, raw,
                       value)
        return int(value)
    return None


def source_spec(cfg: Config) -> SourceSpec:
    c = cfg.camera
    return SourceSpec(c.source, c.width, c.height, c.fps_limit, c.loop, c.realtime,
                      c.stall_timeout_s, c.reconnect_initial_s, c.reconnect_max_s)


def engine_config(cfg: Config) -> EngineConfig:
    i = cfg.inference
    return EngineConfig(delegate=i.delegate, delegate_options=i.delegate_options,
                        require_accelerator=i.require_accelerator, runtime=i.runtime,
                        num_threads=i.threads, cache_dir=i.cache_dir,
                        probe=i.probe_delegate, probe_timeout_s=i.probe_timeout_s)


class StartupInterrupted(BaseException):
    """SIGTERM/SIGINT arrived while starting (e.g. during a long NPU warm-up): abandon the
    start. A BaseException so no ``except Exception`` on the way swallows it; a probe child
    process is killed by subprocess.run on the way out."""


class Service:
    def __init__(self, cfg: Config, config_path: Path | None = None,
                 notifier: Notifier | None = None,
                 pending: PendingSignals | None = None) -> None:
        self.cfg = cfg
        self._pending = pending
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.stats = PipelineStats()
        self.slot = LatestFrameSlot()
        self.state = "starting"
        self.started_mono = time.monotonic()
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self.worker: InferenceWorker | None = None
        self.capture: CaptureThread | None = None
        self.source_reason: str | None = None
        self._status_seq = 0
        self._status_lock = threading.Lock()
        self._source_lock = threading.Lock()  # source_reason and the running/source_down state
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._hang_after = _test_fault_hang_after()
        self._watchdog_starved = False

    # --- status -----------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        logger.info("state: %s -> %s", self.state, state)
        self.state = state
        if self.publisher is not None:
            self.publisher.send_status(self._status())
        self.notifier.notify(f"STATUS={self.status_line()}")

    def status_line(self) -> str:
        backend = self.engine.backend if self.engine else "none"
        fb = " (fallback)" if self.engine and self.engine.fallback_reason else ""
        return f"{self.state}, {backend}{fb}, {self.stats.frames_out} frames"

    def _status(self) -> dict[str, Any]:
        """A status snapshot (publisher thread every interval; any thread on state change)."""
        cap = self.capture
        frames_in = cap.frames if cap else 0
        fps_in, fps_out = self.stats.rates(frames_in)
        eng = self.engine
        with self._status_lock:
            seq = self._status_seq
            self._status_seq += 1
        return status_message(
            camera=self.cfg.camera.name, seq=seq, state=self.state,
            ts_ns=time.time_ns(), uptime_s=time.monotonic() - self.started_mono,
            model=eng.model_name if eng else self.cfg.model.stem,
            backend=eng.backend if eng else "none",
            fallback_reason=eng.fallback_reason if eng else None,
            runtime=eng.runtime if eng else "none", fps_in=fps_in, fps_out=fps_out,
            frames_in=frames_in, frames_out=self.stats.frames_out,
            frames_dropped=self.slot.dropped, source=self.cfg.camera.source,
            source_reason=self.source_reason, reconnects=cap.reconnects if cap else 0,
            latency_ms=self.stats.percentiles(),
            published_dropped=self.publisher.dropped if self.publisher else 0)

    def _on_source(self, up: bool, reason: str) -> None:
        with self._source_lock:
            self.source_reason = None if up else reason
            if self.state in ("running", "source_down"):
                self._set_state("running" if up else "source_down")

    def _serve_state(self) -> None:
        """Leave start-up or a reload for the state the source is in: a source that went down
        meanwhile (reported while the state was warming_up/reloading) must not be lost."""
        with self._source_lock:
            self._set_state("running" if self.source_reason is None else "source_down")

    # --- lifecycle --------------------------------------------------------------------------
    def _start_capture(self) -> None:
        self.capture = CaptureThread(source_spec(self.cfg), self.slot, self._on_source)
        self.capture.start()

    def _start_publisher(self) -> None:
        pub = Publisher(self.cfg.publish, self.cfg.camera.name, self._status)
        pub.bind()
        self.publisher = pub
        pub.start()

    def start(self) -> None:
        # OpenCV's own thread pool (resize, colour conversion of one small frame) would only
        # compete with the interpreter's threads for the board's few cores.
        cv2.setNumThreads(1)
        # Hand-offs between our threads (slot, publish queue) wait for the GIL; the default
        # 5 ms switch interval would show up directly in capture-to-publish latency.
        sys.setswitchinterval(0.0005)
        self._start_publisher()
        self._set_state("warming_up")
        with self.notifier.extending_start_timeout():
            self.engine = open_engine(self.cfg.model, engine_config(self.cfg))
        CONTEXT.set(camera=self.cfg.camera.name, backend=self.engine.backend,
                    model=self.engine.model_name)
        logger.info("model %s on %s via %s, warm-up %.0f ms", self.engine.model_name,
                    self.engine.backend, self.engine.runtime, self.engine.warmup_ms)
        assert self.publisher is not None
        self.worker = InferenceWorker(
            self.engine, self.slot,
            detect_params(self.cfg.detection, self.engine.detector.spec.labels),
            self.publisher.submit, self.stats, self.cfg.camera.name,
            self.cfg.publish.empty_frames, self._hang_after)
        self.worker.start()
        self._start_capture()
        self._serve_state()
        self.notifier.notify("READY=1", f"STATUS={self.status_line()} "
                                        f"(warm-up {self.engine.warmup_ms:.0f} ms)")

    def healthy(self, now: float) -> bool:
        """Should systemd's watchdog be fed? No when inference is stuck inside one frame; yes
        when it merely has no frames (a camera being reconnected)."""
        w = self.worker
        if w is None or not w.is_alive():
            return False
        busy = w.busy_since_mono
        stuck = busy is not None and now - busy > self.cfg.inference.watchdog_timeout_s
        if stuck and not self._watchdog_starved:
            logger.error("inference has not completed a frame for %.1f s (limit %.1f s): "
                         "no longer feeding the systemd watchdog", now - (busy or now),
                         self.cfg.inference.watchdog_timeout_s)
        self._watchdog_starved = stuck
        return not stuck

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def run(self) -> int:
        """Start, serve until stopped, stop. Returns the exit code."""
        handlers = self._install_signals()
        if self._pending is not None:  # signals that came while we were loading
            if self._pending.stop:
                self._stop.set()
            if self._pending.reload:
                self._reload.set()
        code = EXIT_OK
        try:
            try:
                if self._stop.is_set():
                    logger.info("stopped before starting")
                    return code
                self.start()
            except StartupInterrupted:
                logger.info("stopped while starting")
                return code
            period = self.notifier.watchdog_period_s
            next_ping = time.monotonic()
            next_status = time.monotonic() + self.cfg.publish.status_interval_s
            while not self._stop.wait(0.1):
                now = time.monotonic()
                if period is not None and now >= next_ping:
                    if self.healthy(now):
                        self.notifier.notify("WATCHDOG=1")
                    next_ping = now + period
                if now >= next_status:
                    self.notifier.notify(f"STATUS={self.status_line()}")
                    next_status = now + self.cfg.publish.status_interval_s
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if self.worker is not None and self.worker.error is not None:
                    logger.error("stopping: inference failed: %s", self.worker.error)
                    code = EXIT_RUNTIME
                    break
        finally:
            self.shutdown()
            for sig, old in handlers.items():
                signal.signal(sig, old)
        return code

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._stop.set()
            if self.state in ("starting", "warming_up"):
                raise StartupInterrupted

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        old: dict[int, Any] = {}
        for sig, h in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop),
                       (signal.SIGHUP, on_hup)):
            old[sig] = signal.signal(sig, h)
        return old

    def shutdown(self) -> None:
        self._set_state("stopping")
        self.notifier.notify("STOPPING=1")
        deadline = time.monotonic() + STOP_BUDGET_S
        for part in (self.capture, self.worker):
            if part is not None:
                part.stop()
        for name, part in (("capture", self.capture), ("inference", self.worker)):
            if part is not None and not part.join(max(deadline - time.monotonic(), 0.05)):
                logger.warning("%s thread did not stop in time", name)
        if self.publisher is not None:
            self.publisher.stop()
            if not self.publisher.join(max(deadline - time.monotonic(), 0.2)):
                logger.warning("publisher thread did not stop in time")
        self.notifier.close()

    # --- SIGHUP -----------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP. systemd sees RELOADING=1 ... READY=1 around every reload, even a rejected
        or a no-op one."""
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            try:
                new = load_config(self.config_path) if self.config_path else default_config()
            except EdgedError as e:
                logger.error("reload rejected, the running configuration stays: %s", e)
                return
            old = self.cfg
            if new == old:
                logger.info("reload: configuration unchanged")
                return
            self._set_state("reloading")
            try:
                self._apply(old, new)
            finally:
                self._serve_state()
        finally:
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    def _apply(self, old: Config, new: Config) -> None:
        assert self.worker is not None and self.engine is not None
        if (new.model, new.inference) != (old.model, old.inference):
            try:
                engine = open_engine(new.model, engine_config(new))
            except EdgedError as e:
                logger.error("reload: new model/backend rejected, the running one stays: %s", e)
                new = Config(new.camera, old.model, old.inference, new.detection, new.publish,
                             new.log_level, new.source)
            else:
                self.worker.set_engine(engine)
                self.engine = engine
                logger.info("reload: model %s on %s", engine.model_name, engine.backend)
        CONTEXT.set(camera=new.camera.name, backend=self.engine.backend,
                    model=self.engine.model_name)
        labels = self.engine.detector.spec.labels
        self.worker.set_params(detect_params(new.detection, labels), new.publish.empty_frames)
        if new.camera != old.camera or new.publish != old.publish:
            if new.publish != old.publish or new.camera.name != old.camera.name:
                self._restart_publisher(new)
            if new.camera != old.camera:
                if self.capture is not None:
                    self.capture.stop()
                    self.capture.join(2.0)
                self.cfg = new
                self._start_capture()
                logger.info("reload: capture restarted on %s", new.camera.source)
        self.cfg = new
        logger.info("reload: applied %s", new.source)

    def _restart_publisher(self, new: Config) -> None:
        old_pub = self.publisher
        if old_pub is not None:
            old_pub.stop()
            old_pub.join(2.0)
        previous = self.cfg
        self.cfg = new
        try:
            self._start_publisher()
        except EdgedError as e:
            logger.error("reload: cannot publish with the new settings (%s); keeping the old", e)
            self.cfg = previous
            self._start_publisher()
        assert self.worker is not None and self.publisher is not None
        self.worker.set_output(self.publisher.submit, self.cfg.camera.name)
