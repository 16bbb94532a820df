"""Open a model on the best backend available, falling back to the CPU loudly and exactly once.

Backends: ``vx`` (i.MX 8M Plus NPU, libvx_delegate.so), ``ethosu`` (i.MX 93 NPU,
libethosu_delegate.so + the Vela-compiled variant), ``cpu`` (the runtime's built-in kernels,
XNNPACK), or an external delegate given by path. ``auto`` picks by SoC. Any failure to load the
delegate, build the interpreter with it, or warm it up falls back to the CPU with one WARNING;
the reason stays in ``Engine.fallback_reason`` (and so in every status message).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged import sidecar
from edged.config import InferenceConfig
from edged.engine.detector import Detector
from edged.engine.platform import IMX8MP, IMX93, Soc, detect_soc
from edged.engine.probe import probe_in_child
from edged.engine.runtime import Runtime, load_runtime
from edged.engine.selfcheck import MIN_EVIDENCE, SelfCheck, golden_images
from edged.engine.selfcheck import run as run_self_check
from edged.errors import EXIT_NO_ACCELERATOR, EdgedError, ModelError, UsageError, first_line
from edged.spec import Invalid, declared

logger = logging.getLogger(__name__)

VX_LIBRARY = "/usr/lib/libvx_delegate.so"
ETHOSU_LIBRARY = "/usr/lib/libethosu_delegate.so"


class AcceleratorUnavailable(EdgedError):
    """``require_accelerator`` is set and the accelerator could not be used."""

    exit_code = EXIT_NO_ACCELERATOR


@dataclass(frozen=True)
class EngineConfig(InferenceConfig):
    """The ``inference`` settings (declared in edged.config) and where the board keeps its
    parts (tests point these at fakes)."""

    vx_library: str = VX_LIBRARY
    ethosu_library: str = ETHOSU_LIBRARY
    ethosu_device: str = "/dev/ethosu0"
    sysfs_root: Path = Path("/")
    warmup: bool = True

    @classmethod
    def of(cls, inference: InferenceConfig, **board: Any) -> EngineConfig:
        """The config file's ``inference`` section, with ``board`` overriding the parts."""
        return cls(**{f.name: getattr(inference, f.name) for f in fields(inference)}, **board)

    def __post_init__(self) -> None:
        for name in ("delegate", "runtime", "threads"):
            try:
                declared(InferenceConfig, name).metadata["check"](getattr(self, name))
            except Invalid as e:
                raise UsageError(f"{name}: {e.msg}") from None


@dataclass(frozen=True)
class _Attempt:
    backend: str  # vx | ethosu | external | cpu
    library: str | None
    options: dict[str, str]
    variant: str  # sidecar variant key


@dataclass
class Engine:
    detector: Detector
    backend: str  # what actually runs: vx | ethosu | external | cpu
    runtime: str
    soc: Soc
    fallback_reason: str | None = None
    warmup_ms: float = 0.0
    self_check: SelfCheck | None = None  # the accelerator against the CPU (None: not run)

    @property
    def model_name(self) -> str:
        return self.detector.spec.name

    def close(self) -> None:
        """Free the interpreter and its delegate (a replaced engine, after a reload)."""
        self.detector.close()


def option_str(value: Any) -> str:
    """Delegate options are strings; NXP's parsers accept only true/false/1/0 for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _model_key(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _vx_cache_options(cfg: EngineConfig, model: Path) -> dict[str, str]:
    """VX delegate graph cache, keyed by the model's hash; a zero-size file would be taken as a
    valid (empty) cache by the delegate, so it is removed first."""
    if cfg.cache_dir is None:
        return {}
    cache = cfg.cache_dir / f"vx-{model.stem}-{_model_key(model)}.nb"
    try:
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        if cache.exists() and cache.stat().st_size == 0:
            cache.unlink()
    except OSError as e:
        logger.warning("NPU cache directory %s unusable (%s); running without a graph cache",
                       cfg.cache_dir, e.strerror or e)
        return {}
    # The driver-level cache, read when the driver loads (before the first delegate).
    os.environ.setdefault("VIV_VX_ENABLE_CACHE_GRAPH_BINARY", "1")
    os.environ.setdefault("VIV_VX_CACHE_BINARY_GRAPH_DIR", str(cfg.cache_dir))
    return {"allowed_cache_mode": "true", "cache_file_path": str(cache)}


def _plan(cfg: EngineConfig, soc: Soc, spec: sidecar.ModelSpec) -> _Attempt | None:
    """The accelerator to try first, or None for the CPU directly."""
    user = {k: option_str(v) for k, v in cfg.delegate_options.items()}
    kind = cfg.delegate
    if kind == "auto":
        kind = {IMX8MP: "vx", IMX93: "ethosu"}.get(soc.family, "cpu")
    if kind in ("cpu", "xnnpack"):
        return None
    cpu_path = spec.variant_path("cpu")
    if kind == "vx":
        model = spec.variant_path("vx") or cpu_path
        opts = _vx_cache_options(cfg, model) if model is not None and model.is_file() else {}
        return _Attempt("vx", cfg.vx_library, {**opts, **user}, "vx" if "vx" in spec.variants
                        else "cpu")
    if kind == "ethosu":
        opts = {"device_name": cfg.ethosu_device}
        if cfg.cache_dir is not None:
            opts["cache_file_path"] = str(cfg.cache_dir)
        return _Attempt("ethosu", cfg.ethosu_library, {**opts, **user}, "ethosu")
    return _Attempt("external", kind, user, "cpu")


def _warm_up(det: Detector) -> float:
    t0 = time.perf_counter()
    frame = np.full((det.spec.input.height, det.spec.input.width, 3),
                    det.spec.input.pad_value, np.uint8)
    det.preprocess(frame)
    det.invoke()
    return (time.perf_counter() - t0) * 1000.0


InProcess = Callable[[float], AbstractContextManager[None]]


@dataclass
class _Tried:
    """An accelerator attempt: its detector (None: not usable, ``reason`` says why), warm-up,
    self-check, and the check's CPU detector (kept only when it becomes the fallback)."""

    det: Detector | None
    reason: str | None = None
    ms: float = 0.0
    check: SelfCheck | None = None
    cpu: Detector | None = None


def _try_accelerator(att: _Attempt, spec: sidecar.ModelSpec, runtime: Runtime,
                     cfg: EngineConfig, cancel: threading.Event | None,
                     in_process: InProcess | None) -> _Tried:
    model = spec.variant_path(att.variant)
    if model is None:
        return _Tried(None, f"the model has no '{att.variant}' variant "
                            f"(export it with --vela for the i.MX 93)")
    if not model.is_file():
        return _Tried(None, f"model file {model} not found")
    assert att.library is not None
    if os.path.isabs(att.library) and not os.path.exists(att.library):
        # checked first: load_delegate on a missing file also spews a __del__ traceback
        return _Tried(None, f"delegate library {att.library} not found")
    probe_s = 0.0
    if cfg.probe_delegate:
        t0 = time.monotonic()
        why = probe_in_child(runtime.name, att.library, att.options, model, cfg.threads,
                             cfg.probe_timeout_s, cancel)
        if why is not None:
            return _Tried(None, why)
        probe_s = time.monotonic() - t0
    # The delegate builds its graph (and an NPU compiles it at the first invoke) while the
    # runtime holds Python's lock: nothing else in this process runs meanwhile. The caller
    # may prepare for that (stretch the watchdog, let SIGTERM end the process at once). The
    # self-check's invokes are the delegate's too: a hang there is the same hang.
    with (in_process or (lambda _s: contextlib.nullcontext()))(probe_s):
        det, why, ms = _build_with_delegate(att, spec, runtime, cfg, model)
        if det is None or not cfg.self_check:
            return _Tried(det, why, ms)
        return _self_checked(det, att.backend, spec, runtime, cfg, ms)


def _build_with_delegate(att: _Attempt, spec: sidecar.ModelSpec, runtime: Runtime,
                         cfg: EngineConfig, model: Path
                         ) -> tuple[Detector | None, str | None, float]:
    assert att.library is not None
    try:
        delegate = runtime.load_delegate(att.library, att.options)
    except (OSError, ValueError, AttributeError, RuntimeError) as e:
        msg = first_line(e)
        return None, f"cannot load delegate {att.library}: {msg}", 0.0
    try:
        det = Detector(spec, model, cfg.threads, runtime, [delegate])
    except ModelError as e:
        return None, f"{att.backend} delegate cannot run {model.name}: {e}", 0.0
    if not cfg.warmup:
        return det, None, 0.0
    try:
        ms = _warm_up(det)
    except (RuntimeError, ValueError) as e:
        return None, f"{att.backend} warm-up invoke failed: {first_line(e)}", 0.0
    return det, None, ms


def open_engine(sidecar_path: Path, cfg: EngineConfig,
                cancel: threading.Event | None = None,
                in_process: InProcess | None = None) -> Engine:
    """Load the model on the configured backend (with CPU fallback) and warm it up. ``cancel``
    set during the delegate probe kills the probe and raises ``ProbeCancelled``."""
    spec = sidecar.load(sidecar_path)
    runtime = load_runtime(cfg.runtime)
    soc = detect_soc(cfg.sysfs_root)
    att = _plan(cfg, soc, spec)
    reason: str | None = None
    tried = _Tried(None)
    if att is not None:
        logger.info("trying %s backend on %s with %s", att.backend, soc.describe(), runtime.name)
        tried = _try_accelerator(att, spec, runtime, cfg, cancel, in_process)
        if tried.det is not None:
            return Engine(tried.det, att.backend, runtime.name, soc, None, tried.ms,
                          tried.check)
        reason = tried.reason
        if cfg.require_accelerator:
            if tried.cpu is not None:
                tried.cpu.close()
            raise AcceleratorUnavailable(f"accelerator required but unavailable: {reason}")
        logger.warning("falling back to the CPU: %s", reason)
    elif cfg.require_accelerator:
        raise AcceleratorUnavailable(
            f"accelerator required but delegate={cfg.delegate!r} on {soc.describe()} "
            "selects the CPU")
    cpu = spec.variant_path("cpu")
    assert cpu is not None  # the sidecar loader requires variants.cpu
    det = tried.cpu or Detector(spec, cpu, cfg.threads, runtime)  # the check's: warmed up
    ms = _warm_up(det) if cfg.warmup and tried.cpu is None else 0.0
    return Engine(det, "cpu", runtime.name, soc, reason, ms, tried.check)


def recheck(engine: Engine, cfg: EngineConfig) -> Engine | None:
    """The self-check again on a running accelerator engine (the inference thread, between
    frames): None if it still agrees (or cannot tell; ``engine.self_check`` is updated either
    way), else a CPU engine to use instead, its reason saying why. AcceleratorUnavailable if the
    accelerator is required."""
    spec, runtime = engine.detector.spec, engine.detector.runtime
    tried = _self_checked(engine.detector, engine.backend, spec, runtime, cfg, engine.warmup_ms,
                          close=False)
    engine.self_check = tried.check
    if tried.det is not None:
        return None
    if cfg.require_accelerator:
        if tried.cpu is not None:
            tried.cpu.close()
        raise AcceleratorUnavailable(f"accelerator required but unusable: {tried.reason}")
    logger.warning("moving inference to the CPU: %s", tried.reason)
    cpu = tried.cpu
    if cpu is None:  # the check itself failed: a CPU interpreter of our own
        cpu_path = spec.variant_path("cpu")
        assert cpu_path is not None
        cpu = Detector(spec, cpu_path, cfg.threads, runtime)
    return Engine(cpu, "cpu", engine.runtime, engine.soc, tried.reason, 0.0, tried.check)


def _self_checked(det: Detector, backend: str, spec: sidecar.ModelSpec, runtime: Runtime,
                  cfg: EngineConfig, warmup_ms: float, close: bool = True) -> _Tried:
    """``det`` (the accelerator's, warmed up) if the self-check does not find it wrong; else
    why not, with the check's CPU detector as the fallback. Whatever is not returned is
    closed (``det`` only if ``close``: a running engine is closed by its owner)."""
    try:
        check, cpu = _check(det, backend, spec, runtime, cfg)
    except (RuntimeError, ValueError, cv2.error) as e:  # an invoke failed (delegate or CPU)
        if close:
            det.close()
        return _Tried(None, f"self-check failed: {first_line(e)}")
    except BaseException:
        if close:
            det.close()
        raise
    if check.passed is False:
        if close:
            det.close()
        return _Tried(None, (
            f"self-check: the {backend} backend disagrees with the CPU on the golden images "
            f"(agreement {check.agreement:.2f} < {cfg.self_check_min_agreement:.2f}: "
            f"{check.matched} detections matched, {check.unmatched} not; {check.accelerator} on "
            f"the {backend} backend, {check.cpu} on the CPU)"), 0.0, check, cpu)
    cpu.close()
    return _Tried(det, None, warmup_ms, check)


def _check(det: Detector, backend: str, spec: sidecar.ModelSpec, runtime: Runtime,
           cfg: EngineConfig) -> tuple[SelfCheck, Detector]:
    """The accelerator's detections on the golden images against a CPU interpreter's (the
    CPU variant: for the i.MX 93 the Vela model cannot run without the NPU). Returns the check
    and that CPU detector (the fallback, should the check fail)."""
    t0 = time.perf_counter()
    images = golden_images(cfg.self_check_images)  # ModelError: unreadable (exit 2)
    cpu_path = spec.variant_path("cpu")
    assert cpu_path is not None
    cpu = Detector(spec, cpu_path, cfg.threads, runtime)
    try:
        check = run_self_check(det, cpu, cfg.self_check_min_agreement, images)
    except BaseException:
        cpu.close()
        raise
    check = dataclasses.replace(check, ms=round((time.perf_counter() - t0) * 1e3, 1))
    if check.passed is None:
        logger.warning("self-check inconclusive: neither the %s backend nor the CPU is sure of "
                       "%d objects on the %d self-check images (the model's classes are not "
                       "in them?): the %s backend is used unchecked; give "
                       "inference.self_check_images photos of what the model detects",
                       backend, MIN_EVIDENCE, check.images, backend)
        return check, cpu
    (logger.info if check.passed else logger.error)(
        "self-check: %s backend %s the CPU on %d images: agreement %.2f (%d matched, %d "
        "not; %d detections on %s, %d on the CPU), %.0f ms", backend,
        "agrees with" if check.passed else "DISAGREES with", check.images, check.agreement,
        check.matched, check.unmatched, check.accelerator, backend, check.cpu, check.ms)
    return check, cpu
