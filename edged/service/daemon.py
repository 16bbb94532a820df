"""The daemon: builds the stages from the config, runs them, reloads on SIGHUP, stops on
SIGTERM/SIGINT. Startup order: publisher (bind, fail fast) → engine (load, warm up) → worker →
capture; shutdown is the reverse, bounded in time."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import cv2

from edged import sidecar
from edged.api.history import DEFAULT_DB
from edged.api.messages import (
    Message,
    ProcessStatus,
    ReloadStatus,
    SelfCheckStatus,
    SourceStatus,
    StatusMessage,
    Vitals,
)
from edged.config import CameraConfig, Config, default_config, load_config, watched_labels
from edged.engine.detector import DetectParams
from edged.engine.engine import Engine, EngineConfig, open_engine, recheck
from edged.engine.probe import ProbeCancelled
from edged.errors import EXIT_OK, EXIT_RUNTIME, ConfigError, EdgedError
from edged.pipeline.camera import Camera
from edged.pipeline.capture import shown
from edged.pipeline.events import CameraEvents, Numbering, settings_of
from edged.pipeline.frigate import FrigateServer
from edged.pipeline.mqtt import MqttBridge, camera_specs, files_stamp
from edged.pipeline.publish import Publisher, PublishError
from edged.pipeline.snapshots import SnapshotWriter
from edged.pipeline.stats import PipelineStats
from edged.pipeline.store import EventStore
from edged.pipeline.worker import InferenceWorker, Lane, detect_params
from edged.service.log import CONTEXT
from edged.service.sdnotify import Notifier
from edged.service.signals import PendingSignals, default_action

logger = logging.getLogger(__name__)

STOP_BUDGET_S = 1.5  # all joins together, so SIGTERM → exit well within 2 s
CAPTURE_JOIN_S = 0.3
APPLY_WAIT_S = 0.4  # a reload's swap holds its lock at most ~CAPTURE_JOIN_S
# A reload loading a model may take the delegate probe's timeout plus this (reading, building
# and warming the interpreter) before it is abandoned; the deadline is in every status message.
RELOAD_LOAD_BUDGET_S = 120.0
# A config file modified less than this long ago may still be being written by an editor: the
# reload waits for it to stay unchanged that long (at most CONFIG_SETTLE_MAX_S).
CONFIG_QUIET_S = 0.5
BUILD_MARGIN_S = 30.0  # the watchdog stretch around an in-process delegate build, beyond 3x
CONFIG_SETTLE_MAX_S = 5.0
def _builds_engine(cfg: Config) -> EngineConfig:
    """What a new engine is built from: watchdog_timeout_s is read live, so changing it alone
    reloads no model (an NPU graph build can take minutes)."""
    return EngineConfig.of(dataclasses.replace(cfg.inference, watchdog_timeout_s=0.0))


# Settings of the event history and snapshot writers, started once (a reload keeps them).
EVENTS_AT_START = ("enabled", "history", "retention_days", "snapshots", "snapshot_quality",
                   "snapshot_max_mb")


def _events_restart(old: Config, new: Config) -> str:
    """The events settings a reload cannot apply, as "events.x, events.y" ('' if none)."""
    return ", ".join(f"events.{k}" for k in EVENTS_AT_START
                     if getattr(old.events, k) != getattr(new.events, k))


def model_stamp(cfg: Config) -> tuple[tuple[str, int, int, int], ...]:
    """Identity of the model files on disk (sidecar and variants): a model replaced in place
    (`cp new.tflite model.tflite`, then `systemctl reload`) is loaded again."""
    paths = [cfg.model]
    try:
        spec = sidecar.load(cfg.model)
        paths += [p for k in spec.variants if (p := spec.variant_path(k)) is not None]
    except EdgedError:
        pass  # the reload's own load reports it
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append((str(p), -1, -1, -1))
        else:
            out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def read_settled_config(path: Path, stop: threading.Event) -> Config:
    """Load the config once it has stopped changing: a SIGHUP sent while an editor is still
    writing the file (truncate, write, write) must not apply a truncated-but-valid YAML. Waits
    until the file is CONFIG_QUIET_S old and unchanged across the read (at most
    CONFIG_SETTLE_MAX_S). An atomic replace (write a temp file, then mv) is never read half
    written; the 0.5 s wait applies to it too (edged cannot tell it from an editor's write)."""
    deadline = time.monotonic() + CONFIG_SETTLE_MAX_S
    said = False
    while True:
        try:
            before = path.stat()
        except OSError:
            return load_config(path)  # it names the problem
        age = time.time() - before.st_mtime
        if 0 <= age < CONFIG_QUIET_S and time.monotonic() < deadline:
            if not said:
                logger.info("reload: %s changed %.2f s ago; waiting for the writer to finish",
                            path, age)
                said = True
            if stop.wait(CONFIG_QUIET_S - age):
                raise ReloadCancelled
            continue
        try:
            cfg = load_config(path)
        except EdgedError:
            if _changed(path, before) and time.monotonic() < deadline:
                continue  # read while being written: read it again
            raise
        if _changed(path, before) and time.monotonic() < deadline:
            continue
        return cfg


def _changed(path: Path, before: os.stat_result) -> bool:
    try:
        now = path.stat()
    except OSError:
        return True
    return (now.st_ino, now.st_size, now.st_mtime_ns) != \
        (before.st_ino, before.st_size, before.st_mtime_ns)


class ReloadCancelled(Exception):
    """The daemon is stopping: a reload in progress is abandoned."""


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
        self.stats = PipelineStats()  # every camera's frames: the process status
        self._frames = threading.Condition()  # every camera's slot notifies the worker on it
        self.cameras: dict[str, Camera] = {}  # in the config's order
        self.state = "starting"
        self.started_mono = time.monotonic()
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self.worker: InferenceWorker | None = None
        self.store: EventStore | None = None  # the event history (None: not configured)
        self.snapshots: SnapshotWriter | None = None
        self.mqtt: MqttBridge | None = None  # mqtt.enabled
        self.frigate: FrigateServer | None = None  # frigate.enabled
        # Each camera's event and count seqs, by name: across reloads, a camera removed and
        # added back included (as det seqs are kept by the worker).
        self._numbering: dict[str, Numbering] = {}
        # Around a state change, its snapshot and queueing it (main, reload and capture
        # threads); the publisher numbers status messages as it sends them.
        self._status_lock = threading.RLock()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._watchdog_starved = False
        # The reload thread: builds the new pieces while the old ones serve. _reload_gen
        # names the current reload; a reload abandoned at its deadline has an old number,
        # and whatever it builds afterwards is thrown away.
        self._reloader: threading.Thread | None = None
        self._reload_gen = 0
        self._reload_deadline: float | None = None  # monotonic; while loading a model
        self._reload_info: ReloadStatus | None = None  # status "reload"
        self._apply_lock = threading.Lock()  # a reload's swap vs. shutdown
        self._model_stamp: tuple[tuple[str, int, int, int], ...] = ()

    # --- status -----------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        with self._status_lock:
            if state == self.state:
                return
            logger.info("state: %s -> %s", self.state, state)
            self.state = state
            self._changed(self._statuses())

    def _changed(self, messages: list[Message]) -> None:
        """Publish these snapshots now, and tell systemd (under _status_lock)."""
        if self.publisher is not None:
            self.publisher.send_status(messages)
        self.notifier.notify(f"STATUS={self.status_line()}")

    def _on_engine(self, old: Engine, new: Engine) -> None:
        """The periodic self-check moved inference to the CPU (the worker's thread)."""
        with self._status_lock:
            if self.engine is old:
                self.engine = new
                self._log_context()
                self._changed(self._statuses())

    def _on_camera(self, cam: Camera) -> None:
        """A camera's source went up or down (its capture thread)."""
        with self._status_lock:
            if cam.name in self.cameras:
                self._changed([self._process_status(), self._camera_status(cam)])

    def camera_state(self, cam: Camera) -> str:
        """While serving, the camera's own state; otherwise the process's."""
        if self.state != "running":
            return self.state
        return "running" if cam.source_reason is None else "source_down"

    def status_line(self) -> str:
        """systemd's STATUS=: the state, the backend, frames, and each camera when several."""
        backend = self.engine.backend if self.engine else "none"
        fb = " (fallback)" if self.engine and self.engine.fallback_reason else ""
        info = self._reload_info
        rl = f" ({info.phase.replace('_', ' ')})" \
            if self.state == "reloading" and info is not None else ""
        cams = [(c, self.camera_state(c)) for c in self.cameras.values()]
        down = [c for c, st in cams if st == "source_down"]
        if len(cams) == 1:
            cam, head = cams[0]
            if down and cam.source_reason:
                head += f" ({shown(cam.source_reason)[:80]})"
        elif self.state != "running" or not down:
            head = self.state
        else:
            head = "source_down" if len(down) == len(cams) else \
                f"running ({len(down)} of {len(cams)} cameras down)"
        line = f"{head}{rl}, {backend}{fb}, {self.stats.frames_out} frames"
        if len(cams) > 1:
            line += "; " + "; ".join(
                f"{c.name} {st}" + (f" ({shown(c.source_reason)[:40]})" if c in down and
                                    c.source_reason else "") for c, st in cams)
        return line

    def _statuses(self) -> list[Message]:
        """The process's status and each camera's (publisher thread every interval; any
        thread on a state change)."""
        return [self._process_status(), *(self._camera_status(c)
                                          for c in list(self.cameras.values()))]

    def _vitals(self) -> Vitals:
        """What the process's status and each camera's say alike."""
        eng = self.engine
        return Vitals(
            ts_ns=time.time_ns(), uptime_s=round(time.monotonic() - self.started_mono, 3),
            model=eng.model_name if eng else self.cfg.model.stem,
            backend=eng.backend if eng else "none",
            fallback_reason=eng.fallback_reason if eng else None,
            runtime=eng.runtime if eng else "none",
            publish_dropped=self.publisher.dropped if self.publisher else 0,
            endpoints=self.publisher.bound if self.publisher else (),
            reload=self._reload_info)

    def _process_status(self) -> ProcessStatus:
        counts = self.stats.snapshot()
        eng = self.engine
        return ProcessStatus(
            **vars(self._vitals()), seq=0, state=self.state,  # seq: set by the publisher
            inference_load=round(counts.load, 3),
            fps_out=round(counts.fps_out, 2), frames_out=counts.frames_out,
            cameras={c.name: self.camera_state(c) for c in list(self.cameras.values())},
            history=self.store.state if self.store else None,
            snapshots=self.snapshots.state if self.snapshots and self.snapshots.directory
            else None,
            mqtt=self.mqtt.state if self.mqtt is not None else None,
            self_check=SelfCheckStatus(**dataclasses.asdict(eng.self_check))
            if eng and eng.self_check else None,
            frigate=self.frigate.status() if self.frigate is not None else None)

    def _camera_status(self, cam: Camera) -> StatusMessage:
        counts = cam.stats.snapshot()  # frames, drops, rates, latencies: no side effects
        cap, reason = cam.capture, cam.source_reason
        return StatusMessage(
            **vars(self._vitals()), camera=cam.name, seq=0,  # seq: the publisher's
            state=self.camera_state(cam), fps_in=round(counts.fps_in, 2),
            fps_out=round(counts.fps_out, 2), frames_in=counts.frames_in,
            frames_out=counts.frames_out, frames_dropped=counts.frames_dropped,
            source=SourceStatus(
                uri=shown(cam.cfg.source), reason=shown(reason) if reason else None,
                reconnects=cam.reconnects, size=cap.frame_size if cap else None),
            latency_ms=counts.latency_ms,
            occupancy=cam.events.occupancy if cam.events is not None else None)

    # --- lifecycle --------------------------------------------------------------------------
    def _history(self) -> Path | None:
        """The event history file: configured, or under systemd's StateDirectory=."""
        ev = self.cfg.events
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return (ev.history or (Path(state) / DEFAULT_DB.name if state else None)) \
            if ev.enabled else None

    def _start_mqtt(self, cfg: Config) -> MqttBridge | None:
        """The MQTT bridge for ``cfg`` (None: off), started and tapping the publisher.
        ConfigError: paho missing, the password or TLS files unusable."""
        if not cfg.mqtt.enabled:
            return None
        assert self.publisher is not None
        bridge = MqttBridge(cfg.mqtt, camera_specs(cfg), self._history())
        bridge.prepare()
        bridge.start()
        self.publisher.taps = (bridge.offer,)
        return bridge

    def _start_events(self) -> None:
        """The event history and snapshot writer (where configured, or under systemd's
        StateDirectory=), and each camera's event layer."""
        ev = self.cfg.events
        if not ev.enabled:
            return
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        history = self._history()
        snaps = ev.snapshots or (Path(state) / "snapshots" if state else None)
        if history is not None:
            # with MQTT on, every event message also waits in the history's outbox until
            # the broker has it
            self.store = EventStore(history, ev.retention_days, outbox=self.mqtt is not None,
                                    on_commit=self.mqtt.wake if self.mqtt else None,
                                    on_refused=self.mqtt.live if self.mqtt else None)
            self.store.start()
        # Published as snap/<camera>/ always; saved where there is a directory.
        self.snapshots = SnapshotWriter(snaps, ev.snapshot_quality, ev.retention_days * 86400,
                                        int(ev.snapshot_max_mb * (1 << 20)),
                                        ev.snapshot_crop, self.publisher.submit
                                        if self.publisher is not None else None)
        self.snapshots.start()
        logger.info("events: history %s, snapshots %s", history or "off (events.history)",
                    snaps or "published, not saved (events.snapshots)")
        for cam in self.cameras.values():
            cam.events = self._camera_events(cam.cfg)
            if cam.events is not None:
                cam.events.start(time.time_ns())

    def _camera_events(self, cfg: CameraConfig, new: Config | None = None) -> CameraEvents | None:
        """A camera's event layer under ``new`` (default: the running config); the caller
        starts it (``start``: its first count)."""
        new = new or self.cfg
        if not new.events.enabled or self.publisher is None:
            return None
        return CameraEvents(cfg.name, new.events, cfg, self.publisher.submit, self.store,
                            self.snapshots, self._numbering.setdefault(cfg.name, Numbering()),
                            classes=watched_labels(new, cfg))

    def _lanes(self) -> list[Lane]:
        assert self.engine is not None
        labels = self.engine.detector.spec.labels
        return [c.lane(detect_params(self.cfg.detection_for(c.cfg), labels))
                for c in self.cameras.values()]

    def _asked_params(self, cfg: Config) -> DetectParams:
        """What Frigate's requests are filtered with: the top-level ``detection``, every class
        (Frigate chooses the objects it tracks)."""
        assert self.engine is not None
        # min_box_area is in camera-frame pixels: not for Frigate's regions
        return dataclasses.replace(detect_params(cfg.detection, self.engine.detector.spec.labels),
                                   allowed_classes=None, min_box_area=0.0)

    def _start_frigate(self) -> FrigateServer | None:
        """Bound before the model warms up (a busy port fails the start at once); it answers
        Frigate's handshake from now on and its detection requests once the worker runs."""
        if not self.cfg.frigate.enabled:
            return None
        server = FrigateServer(self.cfg.frigate, lambda: self.engine.model_name
                               if self.engine else self.cfg.model.stem)
        server.bind()
        server.start()
        return server

    def _log_context(self) -> None:
        CONTEXT.set(camera=",".join(self.cameras),
                    backend=self.engine.backend if self.engine else "none",
                    model=self.engine.model_name if self.engine else self.cfg.model.stem)

    def start(self) -> None:
        # OpenCV's own thread pool (resize, colour conversion of one small frame) would only
        # compete with the interpreter's threads for the board's few cores.
        cv2.setNumThreads(1)
        # Hand-offs between our threads (slot, publish queue) wait for the GIL; the default
        # 5 ms switch interval would show up directly in capture-to-publish latency.
        sys.setswitchinterval(0.0005)
        self.cameras = {c.name: Camera(c, self._frames, self._on_camera)
                        for c in self.cfg.cameras}
        pub = Publisher(self.cfg.publish, self._statuses)
        pub.bind()
        self.publisher = pub
        pub.start()
        self.mqtt = self._start_mqtt(self.cfg)
        self.frigate = self._start_frigate()
        self._start_events()
        self._set_state("warming_up")
        self._model_stamp = model_stamp(self.cfg)
        with self.notifier.extending_start_timeout():
            self.engine = open_engine(self.cfg.model, EngineConfig.of(self.cfg.inference),
                                      in_process=self._in_process_build)
        self._log_context()
        logger.info("model %s on %s via %s, warm-up %.0f ms, %d camera%s",
                    self.engine.model_name, self.engine.backend, self.engine.runtime,
                    self.engine.warmup_ms, len(self.cameras), "s"[:len(self.cameras) > 1])
        self.worker = InferenceWorker(
            self.engine, self._lanes(), self.publisher.submit, self.stats, self._frames,
            self.cfg.publish.empty_frames, self._asked_params(self.cfg),
            lambda eng: recheck(eng, EngineConfig.of(self.cfg.inference)),
            self.cfg.inference.self_check_interval_h * 3600)
        self.worker.on_engine = self._on_engine
        self.worker.start()
        if self.frigate is not None:
            self.frigate.serve(self.worker.ask)
        for cam in self.cameras.values():
            cam.start()
        self._set_state("running")
        self.notifier.notify("READY=1", f"STATUS={self.status_line()} "
                                        f"(warm-up {self.engine.warmup_ms:.0f} ms)")

    def healthy(self, now: float) -> bool:
        """Should systemd's watchdog be fed? No when inference is stuck inside one frame; yes
        when it merely has no frames (a camera being reconnected)."""
        w = self.worker
        if w is None or not w.is_alive():
            return False
        pub = self.publisher
        if pub is None or not pub.is_alive():
            return False  # nothing reaches anyone: not healthy, whatever inference does
        if now - pub.loop_mono > self.cfg.inference.watchdog_timeout_s:
            if not self._watchdog_starved:
                logger.error("the publisher has not gone round its loop for %.1f s (stuck in "
                             "ZeroMQ?): no longer feeding the systemd watchdog",
                             now - pub.loop_mono)
            self._watchdog_starved = True
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
                if self._reload.is_set() and not self.reload_in_progress():
                    self._reload.clear()  # a SIGHUP during a reload waits for its end
                    self._start_reload()
                self._check_reload_deadline(now)
                if self.worker is not None and self.worker.error is not None:
                    logger.error("stopping: inference failed: %s", self.worker.error)
                    code = getattr(self.worker.error, "exit_code", EXIT_RUNTIME)
                    break
                if self.publisher is not None and not self.publisher.is_alive():
                    logger.error("stopping: the publisher thread failed (see above)")
                    code = EXIT_RUNTIME
                    break
                if self.frigate is not None and not self.frigate.is_alive():
                    logger.error("stopping: the Frigate server thread failed (see above)")
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
        self._stop.set()  # a reload in progress stops at its next step (a probe is killed)
        # A reload's swap is short (no model loading under the lock); wait for it briefly so
        # the parts stopped below are the ones running.
        locked = self._apply_lock.acquire(timeout=APPLY_WAIT_S)
        try:
            self._shutdown()
        finally:
            if locked:
                self._apply_lock.release()

    def _shutdown(self) -> None:
        if self.reload_in_progress() and self._reload_info is not None:
            self._reload_info = dataclasses.replace(
                self._reload_info, state="abandoned", phase="done", ended_ts_ns=time.time_ns(),
                deadline_s=None, message="stopped during the reload")
        self._set_state("stopping")
        self.notifier.notify("STOPPING=1")
        deadline = time.monotonic() + STOP_BUDGET_S
        if self.frigate is not None:  # no new requests; one waiting for the worker ends
            self.frigate.stop()
            self.frigate.join(0.5)
        for cam in self.cameras.values():
            cam.stop()
        if self.worker is not None:
            self.worker.stop()
            if not self.worker.join(max(deadline - time.monotonic(), 0.05)):
                logger.warning("inference thread did not stop in time")
        # A capture thread may sit inside a blocking open/read in FFmpeg (a silent camera)
        # that nothing can interrupt; it is a daemon thread and releases its capture itself,
        # so they all get one short wait, never the budget the publisher's last status needs.
        joined = time.monotonic() + CAPTURE_JOIN_S
        for cam in self.cameras.values():
            if not cam.join(max(joined - time.monotonic(), 0.0)):
                logger.info("%s: capture thread still in a blocking read; not waiting for it",
                            cam.name)
        # Open events end now (the worker has stopped: nothing updates them meanwhile); their
        # end messages go out before the publisher's last status, and into the history.
        now = time.time_ns()
        for cam in self.cameras.values():
            if cam.events is not None:
                cam.events.close_all(now, "shutdown")
        for part in (self.snapshots, self.store):  # both drain at once; the history first
            if part is not None:
                part.stop()
        for part in (self.store, self.snapshots):
            if part is not None and not part.join(max(deadline - time.monotonic(), 0.2)):
                logger.warning("%s did not stop in time", type(part).__name__)
        if self.mqtt is not None:  # after the history: the last ends are in its outbox
            self.mqtt.stop()
            if not self.mqtt.join(max(deadline - time.monotonic(), 0.7)):
                logger.warning("the MQTT bridge did not stop in time")
        if self.publisher is not None:
            self.publisher.stop()
            if not self.publisher.join(max(deadline - time.monotonic(), 0.2)):
                logger.warning("publisher thread did not stop in time")
        self.notifier.close()

    # --- SIGHUP -----------------------------------------------------------------------------
    def reload_in_progress(self) -> bool:
        return self._reloader is not None and self._reloader.is_alive()

    def _start_reload(self) -> None:
        """SIGHUP: read the file and build what changed in a thread, while the running pieces
        go on serving and the main loop goes on feeding the watchdog. systemd sees
        RELOADING=1 ... READY=1 around every reload, even a rejected or a no-op one."""
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self._reload_gen += 1
        self._reload_deadline = None
        self._reload_info = ReloadStatus("in_progress", time.time_ns(), None, "reading", None,
                                         None)
        # A daemon thread: a delegate stuck in native code cannot be interrupted, and must
        # neither block the stop nor keep the process alive (it is abandoned at its deadline).
        self._reloader = threading.Thread(target=self._reload_job, args=(self._reload_gen,),
                                          name="edged-reload", daemon=True)
        self._reloader.start()

    def _phase(self, gen: int, phase: str, deadline_s: float | None = None) -> None:
        if gen == self._reload_gen and self._reload_info is not None:
            self._reload_info = dataclasses.replace(self._reload_info, phase=phase,
                                                    deadline_s=deadline_s)

    def _reload_job(self, gen: int) -> None:
        state, message, entered = "rejected", None, False
        try:
            try:
                new = read_settled_config(self.config_path, self._stop) \
                    if self.config_path else default_config()
            except EdgedError as e:
                logger.error("reload rejected, the running configuration stays: %s", e)
                message = str(e)
                return
            old = self.cfg
            stamp = model_stamp(new)
            load = new.model != old.model or stamp != self._model_stamp \
                or _builds_engine(new) != _builds_engine(old)
            assert self.publisher is not None
            keys = self.publisher.keys_changed(new.publish)
            if new == old and not load and not keys and not self._mqtt_files_changed(new):
                logger.info("reload: configuration unchanged")
                state = "unchanged"
                return
            self._set_state("reloading")
            entered = True
            engine = None
            if load:
                budget = RELOAD_LOAD_BUDGET_S + (
                    new.inference.probe_timeout_s if new.inference.probe_delegate else 0.0)
                self._reload_deadline = time.monotonic() + budget
                self._phase(gen, "loading_model", budget)
                try:
                    engine = open_engine(new.model, EngineConfig.of(new.inference), self._stop,
                                         self._in_process_build)
                except EdgedError as e:
                    logger.error("reload: new model/backend rejected, the running one stays: "
                                 "%s", e)
                    message = f"model/inference kept: {e}"
                    new = dataclasses.replace(new, model=old.model, inference=old.inference)
                    stamp = self._model_stamp
                else:
                    running = self.engine
                    if engine.fallback_reason and running is not None \
                            and running.backend != "cpu":
                        # never trade a working accelerator for the CPU fallback of a
                        # delegate that failed: the running engine stays
                        logger.error("reload: the new backend is unavailable (%s); the running "
                                     "%s engine stays", engine.fallback_reason, running.backend)
                        message = (f"model/inference kept: the new backend is unavailable: "
                                   f"{engine.fallback_reason}")
                        engine.close()
                        engine = None
                        new = dataclasses.replace(new, model=old.model, inference=old.inference)
                        stamp = self._model_stamp
                    elif engine.fallback_reason:
                        message = f"on the CPU: {engine.fallback_reason}"
                self._reload_deadline = None
            self._phase(gen, "applying")
            with self._apply_lock:
                if self._stop.is_set() or gen != self._reload_gen:
                    if engine is not None:
                        engine.close()
                    state = "abandoned"
                    return
                if engine is not None:
                    self._model_stamp = stamp
                kept = self._apply(old, new, engine, keys)
            message = "; ".join(m for m in (message, kept) if m) or None
            state = "partial" if message else "applied"
        except (ProbeCancelled, ReloadCancelled):
            state = "abandoned"  # stopping
        except Exception as e:  # a bug: keep serving with what runs, and say so
            logger.exception("reload failed")
            message = f"internal error: {e}"
        finally:
            self._end_reload(gen, state, message, entered)

    def _end_reload(self, gen: int, state: str, message: str | None,
                    entered: bool) -> None:
        if gen != self._reload_gen or state == "abandoned":
            return  # abandoned at its deadline (already reported) or stopping
        self._reload_deadline = None
        assert self._reload_info is not None
        self._reload_info = dataclasses.replace(
            self._reload_info, state=state, phase="done", deadline_s=None,
            ended_ts_ns=time.time_ns(), message=message)
        if entered and not self._stop.is_set():
            self._set_state("running")
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    @contextlib.contextmanager
    def _in_process_build(self, probe_s: float) -> Iterator[None]:
        """Around a delegate building its graph in this process, which holds Python's lock
        for as long as it takes (nothing else here runs: no status, no watchdog ping, no
        Python signal handler). Before it: say so, stretch systemd's watchdog to 3x what the
        probe took + 30 s, and let SIGTERM/SIGINT end the process at once (their default
        action; systemd counts it as a clean stop). After it: all as it was."""
        gen = self._reload_gen
        if self.reload_in_progress():
            self._phase(gen, "building", self._reload_info.deadline_s
                        if self._reload_info else None)
        logger.warning("building the delegate's graph in this process (its probe took "
                       "%.1f s): publishing pauses meanwhile", probe_s)
        period = self.notifier.watchdog_period_s
        if period is not None:
            stretch = max(2 * period, 3 * probe_s + BUILD_MARGIN_S)
            self.notifier.notify(f"WATCHDOG_USEC={int(stretch * 1e6)}", "WATCHDOG=1")
        try:
            with default_action():
                yield
        finally:
            if period is not None:
                self.notifier.notify(f"WATCHDOG_USEC={int(2 * period * 1e6)}", "WATCHDOG=1")
            if self.reload_in_progress():
                self._phase(gen, "loading_model", self._reload_info.deadline_s
                            if self._reload_info else None)

    def _check_reload_deadline(self, now: float) -> None:
        """A reload still loading its model at the deadline (a delegate hung in-process, with
        probe_delegate off) is abandoned: the running pieces stay, and status says so."""
        deadline = self._reload_deadline
        if deadline is None or now < deadline or not self.reload_in_progress():
            return
        gen = self._reload_gen
        info = self._reload_info
        msg = (f"the new model did not load within {(info and info.deadline_s) or 0:.0f} s (a hung "
               "delegate?); the running configuration stays; restart edged to apply the file")
        logger.error("reload abandoned: %s", msg)
        self._end_reload(gen, "timed_out", msg, True)
        self._reload_gen += 1  # whatever that thread builds later is discarded
        self._reloader = None

    def _apply(self, old: Config, new: Config, engine: Engine | None,
               keys_changed: bool = False) -> str | None:
        """Swap in what changed (under _apply_lock; nothing slow happens here: the model was
        loaded before). Returns what was kept from the running configuration, if anything."""
        assert self.worker is not None and self.engine is not None
        assert self.publisher is not None
        kept: str | None = None
        if new.publish != old.publish or keys_changed:
            try:
                for change in self.publisher.reconfigure(new.publish):
                    logger.info("reload: publish: %s", change)
            except PublishError as e:
                logger.error("reload: publish settings rejected, the running ones stay "
                             "(retried on the next reload): %s", e)
                kept = f"publish kept: {e}"
                new = dataclasses.replace(new, publish=old.publish)
        restart = _events_restart(old, new)
        if restart:
            logger.error("reload: %s take a restart (systemctl restart edged); the running "
                         "ones stay", restart)
            kept = "; ".join(k for k in (kept, f"{restart} take a restart") if k)
            new = dataclasses.replace(new, events=dataclasses.replace(
                new.events, **{k: getattr(old.events, k) for k in EVENTS_AT_START}))
        if new.frigate != old.frigate:
            logger.error("reload: frigate settings take a restart (systemctl restart edged); "
                         "the running ones stay")
            kept = "; ".join(k for k in (kept, "frigate takes a restart") if k)
            new = dataclasses.replace(new, frigate=old.frigate)
        self._apply_cameras(new, engine)
        new, mqtt_kept = self._apply_mqtt(old, new)
        kept = "; ".join(k for k in (kept, mqtt_kept) if k) or None
        if self.snapshots is not None:
            self.snapshots.crop = new.events.snapshot_crop  # from the next picture on
        if new.inference.self_check_interval_h != old.inference.self_check_interval_h:
            self.worker.recheck_every(new.inference.self_check_interval_h * 3600)
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        self.cfg = new
        self._log_context()
        logger.info("reload: applied %s%s", new.source, f" ({kept})" if kept else "")
        return kept

    def _mqtt_files_changed(self, new: Config) -> bool:
        """The MQTT password or TLS files were replaced on disk (the config may be the same)."""
        return self.mqtt is not None and self.mqtt.files != files_stamp(new.mqtt)

    def _apply_mqtt(self, old: Config, new: Config) -> tuple[Config, str | None]:
        """New MQTT settings, or a password or TLS file changed on disk: a new bridge (the old
        one disconnects first); new cameras or labels: announced again. Returns the config
        applied and what was kept (the running bridge, when the new one cannot be built)."""
        if new.mqtt == old.mqtt and not self._mqtt_files_changed(new):
            if self.mqtt is not None and camera_specs(new) != camera_specs(old):
                self.mqtt.update_cameras(camera_specs(new))
            return new, None
        try:
            bridge = MqttBridge(new.mqtt, camera_specs(new), self._history()) \
                if new.mqtt.enabled else None
            if bridge is not None:
                bridge.prepare()
        except ConfigError as e:
            logger.error("reload: mqtt settings rejected, the running ones stay: %s", e)
            return dataclasses.replace(new, mqtt=old.mqtt), f"mqtt kept: {e}"
        old_bridge, self.mqtt = self.mqtt, bridge
        assert self.publisher is not None
        self.publisher.taps = (bridge.offer,) if bridge is not None else ()
        if self.store is not None:  # before the old bridge stops: it misses nothing after
            self.store.outbox = bridge is not None
            self.store.on_commit = bridge.wake if bridge is not None else None
            self.store.on_refused = bridge.live if bridge is not None else None
        if old_bridge is not None:
            old_bridge.stop()
            old_bridge.join(1.0)
            if bridge is not None:
                bridge.handover(old_bridge)
        if bridge is not None:
            bridge.start()
        logger.info("reload: mqtt %s", "reconnecting" if bridge else "off")
        return new, None

    def _apply_cameras(self, new: Config, engine: Engine | None) -> None:
        """Cameras by name: a removed one stops, an added one starts, one whose capture
        settings changed gets a new capture (and slot); detection settings and weights apply
        at the next frame. The other cameras' captures are not touched. The worker gets the
        new engine (if any) and the new cameras in one swap: never a new model's class ids
        filtered with the old labels."""
        assert self.worker is not None
        running = self.cameras
        cameras: dict[str, Camera] = {}
        restart: list[Camera] = []
        retired: list[tuple[CameraEvents, str]] = []  # closed once the worker has the new
        started: list[CameraEvents] = []  # their first count once the retired ones ended
        for cfg in new.cameras:
            cam = running.get(cfg.name)
            if cam is None:
                cam = Camera(cfg, self._frames, self._on_camera)
                restart.append(cam)
                logger.info("reload: camera %s added (%s)", cfg.name, shown(cfg.source))
            elif cfg.capture() != cam.cfg.capture():
                restart.append(cam)
                logger.info("reload: camera %s: capture restarted on %s", cfg.name,
                            shown(cfg.source))
            if cam.events is None or cam.events.settings != settings_of(new.events, cfg) \
                    or not new.events.enabled:
                if cam.events is not None:  # new zones, masks or rules: a new tracker
                    retired.append((cam.events, "reload"))
                cam.events = self._camera_events(cfg, new)
                if cam.events is not None:
                    started.append(cam.events)
            else:
                cam.events.watch(watched_labels(new, cfg), time.time_ns())
            cam.cfg = cfg
            cameras[cfg.name] = cam
        removed = [c for name, c in running.items() if name not in cameras]
        retired += [(c.events, "removed") for c in removed if c.events is not None]
        for cam in removed + restart:
            cam.stop()
        joined = time.monotonic() + CAPTURE_JOIN_S
        for cam in restart:
            cam.stop_capture(max(joined - time.monotonic(), 0.0))  # and a new slot
        with self._status_lock:
            self.cameras = cameras
            if engine is not None:
                if self.frigate is not None and self.engine is not None and \
                        engine.detector.spec.labels != self.engine.detector.spec.labels:
                    logger.warning("reload: the new model's classes differ: write Frigate's "
                                   "labelmap again (edged frigate-labelmap) and restart Frigate")
                self.engine = engine
                logger.info("reload: model %s on %s", engine.model_name, engine.backend)
            self.cfg = dataclasses.replace(self.cfg, cameras=new.cameras,
                                           detection=new.detection)
            # at the next frame boundary; a replaced engine is closed by the worker after it
            self.worker.update(self._lanes(), new.publish.empty_frames, engine,
                               self._asked_params(new))
            now = time.time_ns()
            for events, reason in retired:  # a frame of the old lanes in flight finds it closed
                events.close_all(now, reason)
            for events in started:
                events.start(now)
            for cam in removed:
                logger.info("reload: camera %s removed", cam.name)
                final = self._camera_status(cam)
                self._changed([self._process_status(),
                               dataclasses.replace(final, state="stopping")])
        if self._stop.is_set():
            return  # stopping meanwhile: no new capture
        for cam in restart:
            cam.start()
