"""The daemon's configuration: one YAML file, strictly validated.

Unknown keys are rejected, every value is type- and range-checked, and every error names its key
path (``detection.conf_threshold: expected a number in [0, 1], got 1.5``). ``config.example.yaml``
documents every key; ``default_config()`` is what ``edged run`` uses without ``--config``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged import sidecar
from edged.engine.engine import BUILTIN_DELEGATES
from edged.errors import ConfigError, ModelError
from edged.limits import MAX_DETECTIONS, THREADS
from edged.media import SAMPLE_CLIP
from edged.models import DEFAULT_MODEL
from edged.yamlfile import MAX_VALUES, parse, read_text, show

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # used with fullmatch: "$" accepts a final "\n"
# A config file is small: anything larger, or expanding (YAML aliases) into more values, is a
# mistake or an attack; both are refused before they can cost memory or time.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = MAX_VALUES
# Every string goes into status messages or paths: PATH_MAX bounds them all.
MAX_STRING = 4096
MAX_DEVICE_INDEX = 1023  # V4L2 camera indexes (/dev/videoN); OpenCV takes a C int
_TCP_RE = re.compile(r"^tcp://(\*|[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


@dataclass(frozen=True)
class CameraConfig:
    name: str = "sample"
    source: str = str(SAMPLE_CLIP)  # /dev/videoN, an index, a URL, a GStreamer pipeline, a file
    width: int | None = None
    height: int | None = None
    fps_limit: float | None = None
    loop: bool = True  # files: start again at the end
    realtime: bool = True  # files: pace frames at the file's frame rate
    stall_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class InferenceConfig:
    delegate: str = "auto"
    delegate_options: Mapping[str, str] = field(default_factory=dict)
    require_accelerator: bool = False
    runtime: str = "auto"
    threads: int = 2
    cache_dir: Path | None = None
    # An invoke running longer than this counts as hung: the systemd watchdog pings stop.
    watchdog_timeout_s: float = 10.0
    # Try an NPU/external delegate in a child process before loading it: a delegate that
    # crashes or hangs in its warm-up then costs a CPU fallback instead of the daemon.
    probe_delegate: bool = True
    probe_timeout_s: float = 300.0


@dataclass(frozen=True)
class DetectionConfig:
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    class_thresholds: Mapping[str, float] = field(default_factory=dict)  # label -> min score
    classes: tuple[str, ...] | None = None  # allow-list of labels; None: all
    min_box_area: float = 0.0  # pixels^2 of the original frame


@dataclass(frozen=True)
class CurveConfig:
    server_secret_key: Path  # a zmq certificate file with the server's secret key
    authorized_keys_dir: Path | None = None  # client public certificates; None: any client


@dataclass(frozen=True)
class PublishConfig:
    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5556",)
    ipc_mode: int = 0o660
    sndhwm: int = 1000
    linger_ms: int = 200  # lets the final "stopping" status out; bounded, unlike the default
    empty_frames: bool = True
    status_interval_s: float = 1.0
    curve: CurveConfig | None = None


@dataclass(frozen=True)
class Config:
    camera: CameraConfig = field(default_factory=CameraConfig)
    model: Path = DEFAULT_MODEL
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    log_level: str = "info"
    source: str = "<built-in default>"  # where it was loaded from


def default_config() -> Config:
    return Config()


# --- validation ------------------------------------------------------------------------------

class _V:
    """Typed getters over one mapping, errors carrying the key path."""

    def __init__(self, data: Any, path: str, where: str) -> None:
        self.where = where
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail("", f"expected a mapping, got {type(data).__name__}")
        self.data: dict[str, Any] = data

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def fail(self, k: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}: {self.key(k) if k else self.path or '<top>'}: {msg}")

    def check_keys(self, allowed: set[str]) -> None:
        for k in self.data:
            if k not in allowed:
                near = difflib.get_close_matches(k, sorted(allowed), 1) \
                    if isinstance(k, str) and len(k) <= 100 else []
                hint = f" (did you mean '{near[0]}'?)" if near else \
                    f" (allowed: {', '.join(sorted(allowed))})"
                raise self.fail(show(k)[1:-1] if isinstance(k, str) else show(k),
                                f"unknown key{hint}")

    def get(self, k: str, default: Any, check: Callable[[Any], Any], what: str) -> Any:
        if k not in self.data or (self.data[k] is None and default is None):
            return default
        v = self.data[k]
        try:
            out = check(v)
        except (TypeError, ValueError):
            out = None
        if out is None:
            raise self.fail(k, f"expected {what}, got {show(v)}")
        return out

    def get_num(self, k: str, default: float | None, lo: float, hi: float,
            lo_open: bool = False) -> float | None:
        def ok(v: Any) -> float | None:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return None
            f = float(v)
            return f if (f > lo if lo_open else f >= lo) and f <= hi else None
        lo_s = "(" if lo_open else "["
        out: float | None = self.get(k, default, ok, f"a number in {lo_s}{lo:g}, {hi:g}]")
        return out

    def get_int(self, k: str, default: int | None, lo: int, hi: int) -> int | None:
        def ok(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else None
        out: int | None = self.get(k, default, ok, f"an integer in [{lo}, {hi}]")
        return out

    def get_bool(self, k: str, default: bool) -> bool:
        return bool(self.get(k, default, lambda v: v if isinstance(v, bool) else None,
                             "true or false"))

    def get_str(self, k: str, default: str | None) -> str | None:
        out: str | None = self.get(
            k, default, lambda v: v if isinstance(v, str) and 0 < len(v) <= MAX_STRING else None,
            f"a non-empty string of at most {MAX_STRING} characters")
        return out

    def sub(self, k: str) -> _V:
        return _V(self.data.get(k), self.key(k), self.where)


def _check_source(v: _V) -> str:
    raw = v.data.get("source", CameraConfig.source)
    if isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        raw = int(raw.strip())
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw <= MAX_DEVICE_INDEX:
            raise v.fail("source", f"a camera index must be in [0, {MAX_DEVICE_INDEX}], got "
                                   f"{show(raw)}")
        return str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise v.fail("source", f"expected a device, URL, pipeline or file, got {show(raw)}")
    if "\0" in raw:
        raise v.fail("source", f"contains a NUL byte: {show(raw)}")
    if len(raw) > MAX_STRING:
        raise v.fail("source", f"longer than {MAX_STRING} characters: {show(raw)}")
    return raw.strip()


def _camera(v: _V) -> CameraConfig:
    v.check_keys(set(CameraConfig.__dataclass_fields__))
    name = v.get_str("name", "sample")
    assert name is not None
    if not _NAME_RE.fullmatch(name):
        raise v.fail("name", f"use 1-64 letters, digits, '_', '-' or '.', got {show(name)}")
    source = _check_source(v)
    from edged.pipeline.capture import classify_source  # local: keeps this module's imports light

    kind = classify_source(source)
    if kind == "file" and not Path(source).is_file():
        raise v.fail("source", f"file {source} not found (a device, URL or pipeline also works)")
    cam = CameraConfig(
        name=name, source=source,
        width=v.get_int("width", None, 16, 16384), height=v.get_int("height", None, 16, 16384),
        fps_limit=v.get_num("fps_limit", None, 0.0, 1000.0, lo_open=True),
        loop=v.get_bool("loop", True), realtime=v.get_bool("realtime", True),
        stall_timeout_s=v.get_num("stall_timeout_s", 5.0, 0.1, 3600.0) or 5.0,
        reconnect_initial_s=v.get_num("reconnect_initial_s", 0.5, 0.01, 3600.0) or 0.5,
        reconnect_max_s=v.get_num("reconnect_max_s", 30.0, 0.01, 3600.0) or 30.0,
    )
    if (cam.width is None) != (cam.height is None):
        raise v.fail("width", "set both width and height, or neither")
    if cam.reconnect_max_s < cam.reconnect_initial_s:
        raise v.fail("reconnect_max_s", "must be >= reconnect_initial_s")
    return cam


def _inference(v: _V) -> InferenceConfig:
    v.check_keys(set(InferenceConfig.__dataclass_fields__))
    delegate = v.get_str("delegate", "auto")
    assert delegate is not None
    if delegate not in BUILTIN_DELEGATES:
        if "/" not in delegate and not delegate.endswith(".so"):
            raise v.fail("delegate", f"must be one of {', '.join(BUILTIN_DELEGATES)} or a path "
                                     f"to a delegate .so, got {show(delegate)}")
        if delegate.startswith("/") and not Path(delegate).is_file():
            raise v.fail("delegate", f"delegate library {delegate} not found")
    opts_v = v.sub("delegate_options")
    options = {}
    for k, val in opts_v.data.items():
        if isinstance(val, dict | list) or val is None:
            raise opts_v.fail(str(k), f"expected a scalar, got {show(val)}")
        options[str(k)] = "true" if val is True else "false" if val is False else str(val)
    runtime = v.get_str("runtime", "auto")
    if runtime not in ("auto", "ai_edge_litert", "tflite_runtime", "tensorflow"):
        raise v.fail("runtime", "must be auto, ai_edge_litert, tflite_runtime or tensorflow, "
                                f"got {show(runtime)}")
    cache = v.get_str("cache_dir", None)
    return InferenceConfig(delegate, options, v.get_bool("require_accelerator", False),
                           runtime or "auto", v.get_int("threads", 2, *THREADS) or 2,
                           Path(cache) if cache else None,
                           v.get_num("watchdog_timeout_s", 10.0, 0.1, 3600.0) or 10.0,
                           v.get_bool("probe_delegate", True),
                           v.get_num("probe_timeout_s", 300.0, 1.0, 7200.0) or 300.0)


def _detection(v: _V, labels: tuple[str, ...]) -> DetectionConfig:
    v.check_keys(set(DetectionConfig.__dataclass_fields__))
    ct = v.sub("class_thresholds")
    thresholds: dict[str, float] = {}
    for label in ct.data:
        if label not in labels:
            raise ct.fail(show(label), _unknown_label(label, labels))
        val = ct.get_num(str(label), None, 0.0, 1.0)
        assert val is not None
        thresholds[str(label)] = val
    classes: tuple[str, ...] | None = None
    if v.data.get("classes") is not None:
        raw = v.data["classes"]
        if not isinstance(raw, list) or not raw:
            raise v.fail("classes", f"expected a non-empty list of labels, got {show(raw)}")
        for i, label in enumerate(raw):
            if label not in labels:
                raise v.fail(f"classes[{i}]", _unknown_label(label, labels))
        classes = tuple(str(x) for x in raw)
    return DetectionConfig(
        conf_threshold=v.get_num("conf_threshold", 0.25, 0.0, 1.0) or 0.0,
        iou_threshold=v.get_num("iou_threshold", 0.45, 0.0, 1.0) or 0.0,
        max_detections=v.get_int("max_detections", 100, *MAX_DETECTIONS) or 100,
        class_thresholds=thresholds, classes=classes,
        min_box_area=v.get_num("min_box_area", 0.0, 0.0, 1e9) or 0.0)


def _unknown_label(label: Any, labels: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(label, labels, 1) if isinstance(label, str) and \
        len(label) <= 100 else []
    return f"{show(label)} is not a label of the model" + (f" (did you mean '{near[0]}'?)"
                                                           if near else "")


def check_endpoint(ep: str) -> str | None:
    """None if ``ep`` is a valid tcp/ipc endpoint, else what is wrong with it."""
    if ep.startswith("ipc://"):
        if len(ep) == 6:
            return "ipc:// needs a path"
        # a Unix socket address holds 107 bytes of path (sun_path)
        return None if len(ep[6:].encode()) <= 107 else "an ipc path may have 107 bytes at most"
    if len(ep) > 300:
        return "too long for a tcp endpoint"
    m = _TCP_RE.match(ep)
    if not m:
        return "expected tcp://HOST:PORT or ipc:///path"
    if not 1 <= int(m.group(2)) <= 65535:
        return f"port {m.group(2)} out of range 1..65535"
    return None


def _publish(v: _V) -> PublishConfig:
    v.check_keys(set(PublishConfig.__dataclass_fields__))
    raw = v.data.get("endpoints", list(PublishConfig.endpoints))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise v.fail("endpoints", f"expected a non-empty list of endpoints, got {show(raw)}")
    for i, ep in enumerate(raw):
        problem = check_endpoint(ep) if isinstance(ep, str) else "expected a string"
        if problem:
            raise v.fail(f"endpoints[{i}]", f"{problem}, got {show(ep)}")
    if len(set(raw)) != len(raw):
        raise v.fail("endpoints", "lists an endpoint twice")
    mode = v.get("ipc_mode", 0o660,
                 lambda m: int(m, 8) if isinstance(m, str) and re.fullmatch(r"0?[0-7]{3}", m)
                 else None, "an octal mode string like '0660'")
    curve = None
    if v.data.get("curve") is not None:
        cv = v.sub("curve")
        cv.check_keys({"server_secret_key", "authorized_keys_dir"})
        key = cv.get_str("server_secret_key", None)
        if key is None:
            raise cv.fail("server_secret_key", "required when curve is set")
        if not Path(key).is_file():
            raise cv.fail("server_secret_key", f"file {key} not found")
        if any(not e.startswith("tcp://") for e in raw):
            raise v.fail("curve", "CURVE applies to tcp endpoints; remove the ipc ones or curve")
        keys_dir = cv.get_str("authorized_keys_dir", None)
        if keys_dir is not None and not Path(keys_dir).is_dir():
            raise cv.fail("authorized_keys_dir", f"directory {keys_dir} not found")
        curve = CurveConfig(Path(key), Path(keys_dir) if keys_dir else None)
    return PublishConfig(
        endpoints=tuple(raw), ipc_mode=mode,
        sndhwm=v.get_int("sndhwm", 1000, 1, 1_000_000) or 1000,
        linger_ms=v.get_int("linger_ms", 200, 0, 10_000) or 0,
        empty_frames=v.get_bool("empty_frames", True),
        status_interval_s=v.get_num("status_interval_s", 1.0, 0.05, 3600.0) or 1.0,
        curve=curve)


def parse_config(data: Any, where: str = "config") -> Config:
    top = _V(data, "", where)
    top.check_keys({"camera", "model", "inference", "detection", "publish", "log_level"})
    model_raw = top.get_str("model", None)
    model = Path(model_raw) if model_raw else DEFAULT_MODEL
    if not model.is_file():
        raise top.fail("model", f"model sidecar {model} not found")
    try:
        spec = sidecar.load(model)
    except ModelError as e:
        raise ConfigError(f"{where}: model: {e}") from e
    level = top.get_str("log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise top.fail("log_level", f"must be debug, info, warning or error, got {show(level)}")
    return Config(
        camera=_camera(top.sub("camera")),
        model=model,
        inference=_inference(top.sub("inference")),
        detection=_detection(top.sub("detection"), spec.labels),
        publish=_publish(top.sub("publish")),
        log_level=level or "info",
        source=where,
    )


def read_config_text(path: Path) -> str:
    """The file's text: a regular file, at most MAX_CONFIG_BYTES, UTF-8; ConfigError naming
    the problem."""
    return read_text(path, MAX_CONFIG_BYTES, "config file", ConfigError)


def load_config(path: Path) -> Config:
    data = parse(read_config_text(path), str(path), ConfigError, MAX_CONFIG_VALUES)
    if data is None:
        # Never "all defaults": an empty file is a mistake or a half-written edit (a SIGHUP
        # arriving between truncate and write), and the defaults would rebind the socket.
        raise ConfigError(f"{path}: the file is empty (run without --config for the defaults)")
    return parse_config(data, str(path))
