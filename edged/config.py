"""The daemon's configuration: one YAML file, strictly validated.

Each key is declared once below (``setting``: default, doc, check); validation, the CLI's option
defaults and the README's config reference (``python -m edged.config --markdown``) derive from
those declarations. Unknown keys are rejected and every error names its key path
(``detection.conf_threshold: expected a number in [0, 1], got 1.5``). What depends on more than
one key, the model or the filesystem is checked by ``_cross``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged import sidecar
from edged.errors import ConfigError, ModelError
from edged.media import SAMPLE_CLIP
from edged.models import DEFAULT_MODEL
from edged.spec import (
    Int,
    Invalid,
    Num,
    OneOf,
    Reader,
    Text,
    below,
    list_of,
    map_of,
    mapping,
    markdown,
    no_unknown,
    setting,
)
from edged.yamlfile import MAX_VALUES, parse, read_text, show

# A config file is small: anything larger, or expanding (YAML aliases) into more values, is a
# mistake or an attack; both are refused before they can cost memory or time.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = MAX_VALUES
# Every string goes into status messages or paths: PATH_MAX bounds them all.
MAX_STRING = 4096
MAX_CAMERAS = 16  # each one a capture thread and a decoder; one accelerator serves them all
MAX_DEVICE_INDEX = 1023  # V4L2 camera indexes (/dev/videoN); OpenCV takes a C int
BUILTIN_DELEGATES = ("auto", "vx", "ethosu", "cpu", "xnnpack")
_URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # used with fullmatch: "$" accepts a final "\n"
_TCP_RE = re.compile(r"^tcp://(\*|[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")
TEXT = Text(MAX_STRING)


def classify_source(source: str) -> str:
    """``v4l2`` | ``gstreamer`` | ``url`` | ``file``."""
    s = source.strip()
    if (s.isascii() and s.isdigit()) or s.startswith("/dev/video"):
        return "v4l2"
    if s.startswith("gst:") or " ! " in s:
        return "gstreamer"
    if s.lower().startswith(_URL_SCHEMES):
        return "url"
    return "file"


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


# --- checks of single values (the generic ones are in edged.spec) -------------------------

def valid_name(v: str) -> bool:
    """A camera or zone name (also a file name: never "." or "..")."""
    return bool(_NAME_RE.fullmatch(v)) and set(v) != {"."}


def _name(v: Any) -> str:
    if not valid_name(TEXT(v)):
        raise Invalid(f"use 1-64 letters, digits, '_', '-' or '.', got {show(v)}")
    return str(v)


def _source(raw: Any) -> str:
    if isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        raw = int(raw.strip())
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw <= MAX_DEVICE_INDEX:
            raise Invalid(f"a camera index must be in [0, {MAX_DEVICE_INDEX}], got {show(raw)}")
        return str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise Invalid(f"expected a device, URL, pipeline or file, got {show(raw)}")
    if "\0" in raw:
        raise Invalid(f"contains a NUL byte: {show(raw)}")
    if len(raw) > MAX_STRING:
        raise Invalid(f"longer than {MAX_STRING} characters: {show(raw)}")
    return raw.strip()


def check_delegate(v: Any) -> str:
    """A built-in delegate name or something that looks like a path to a delegate library."""
    d = TEXT(v)
    if d not in BUILTIN_DELEGATES and "/" not in d and not d.endswith(".so"):
        raise Invalid(f"must be one of {', '.join(BUILTIN_DELEGATES)} or a path to a delegate "
                      f".so, got {show(d)}")
    return d


def _scalar(v: Any) -> str:
    if isinstance(v, dict | list) or v is None:
        raise Invalid(f"expected a scalar, got {show(v)}")
    return "true" if v is True else "false" if v is False else str(v)


def _options(v: Any) -> dict[str, str]:
    return {str(k): x for k, x in map_of(_scalar)(v).items()}


UNIT = Num(0.0, 1.0)


def _labels(v: Any) -> tuple[Any, ...]:  # which are the model's: _cross
    if not isinstance(v, list) or not v:
        raise Invalid(f"expected a non-empty list of labels, got {show(v)}")
    return tuple(v)


def _image_paths(v: Any) -> tuple[Path, ...]:  # that they exist: _cross
    if not isinstance(v, list) or not 1 <= len(v) <= 20:
        raise Invalid(f"expected a list of 1-20 image files, got {show(v)}")
    return tuple(Path(p) for p in list_of(TEXT)(v))


def _endpoints(raw: Any) -> tuple[str, ...]:
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list) or not raw:
        raise Invalid(f"expected a non-empty list of endpoints, got {show(raw)}")
    for i, ep in enumerate(raw):
        problem = check_endpoint(ep) if isinstance(ep, str) else "expected a string"
        if problem:
            raise Invalid(f"{problem}, got {show(ep)}", f"[{i}]")
    if len(set(raw)) != len(raw):
        raise Invalid("lists an endpoint twice")
    return tuple(raw)


def _mode(m: Any) -> int:
    if not isinstance(m, str) or not re.fullmatch(r"0?[0-7]{3}", m):
        raise Invalid(f"expected an octal mode string like '0660', got {show(m)}")
    return int(m, 8)


def _secret_key(v: Any) -> str:
    if v is None:
        raise Invalid("required when curve is set")
    return TEXT(v)


MAX_POLYGON_POINTS = 64
MAX_ZONES = 32  # per camera, and as many masks


def _point(v: Any) -> tuple[float, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise Invalid(f"expected a point [x, y], got {show(v)}")
    x, y = (below(f"[{i}]", UNIT, c) for i, c in enumerate(v))
    return (x, y)


def _polygon(v: Any) -> tuple[tuple[float, float], ...]:
    """At least 3 points [x, y], normalized to the frame (0..1; x right, y down)."""
    if not isinstance(v, list) or not 3 <= len(v) <= MAX_POLYGON_POINTS:
        raise Invalid(f"expected a polygon: a list of 3-{MAX_POLYGON_POINTS} points [x, y] "
                      f"in 0..1, got {show(v)}")
    return tuple(list_of(_point)(v))


def _zone(v: Any) -> dict[str, Any]:
    if isinstance(v, list):  # the short form: just the polygon
        v = {"polygon": v}
    v = mapping(v)
    no_unknown(v, {"polygon", "labels"}, listed=False)
    if "polygon" not in v:
        raise Invalid("a zone needs a polygon")
    return {"polygon": below(".polygon", _polygon, v["polygon"]),
            "labels": None if v.get("labels") is None else below(".labels", _labels,
                                                                 v["labels"])}


def _zones(v: Any) -> dict[str, dict[str, Any]]:
    v = mapping(v)
    if len(v) > MAX_ZONES:
        raise Invalid(f"at most {MAX_ZONES} zones, got {len(v)}")
    for k in v:
        below(f".{show(k)[1:-1] if isinstance(k, str) else show(k)}", _name, k)
    zones: dict[str, dict[str, Any]] = map_of(_zone)(v)
    return zones


def _masks(v: Any) -> tuple[tuple[tuple[float, float], ...], ...]:
    if not isinstance(v, list) or len(v) > MAX_ZONES:
        raise Invalid(f"expected a list of at most {MAX_ZONES} polygons, got {show(v)}")
    return tuple(list_of(_polygon)(v))


ANCHORS = ("bottom_center", "center")
# The keys of `events` a label may override (`events.labels`): the lifecycle rules.
LABEL_RULES = ("min_hits", "window", "min_score", "end_after_s", "stationary_after_s",
               "update_interval_s")


# --- the declarations ---------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionConfig:
    conf_threshold: float = setting(0.25, "Minimum score (objectness x class probability)",
                                    UNIT)
    iou_threshold: float = setting(0.45, "NMS overlap above which the weaker box of the same "
                                   "class is dropped", UNIT)
    max_detections: int = setting(100, "Detections kept per frame, best first",
                                  Int(1, 10_000))
    class_thresholds: Mapping[str, float] = setting(
        doc="Per-label minimum scores overriding `conf_threshold`, e.g. `{bird: 0.3}`",
        check=map_of(lambda v: v), factory=dict)  # labels, then values: _cross
    classes: tuple[str, ...] | None = setting(None, "Only report these labels, e.g. `[bird, "
                                              "cat]` (null: all)", _labels)
    min_box_area: float = setting(0.0, "Drop boxes smaller than this many square pixels of the "
                                  "original frame", Num(0.0, 1e9))


@dataclass(frozen=True)
class CameraConfig:
    name: str = setting("sample", "Used in the topics `det/<name>/`, `status/<name>/`: 1-64 "
                        "letters, digits, `_`, `-`, `.`", _name)
    source: str = setting(str(SAMPLE_CLIP), "`/dev/videoN` or an index, an `rtsp://`/`http://` "
                          "URL, a GStreamer pipeline, or a file", _source,
                          shown="the bundled sample clip")
    width: int | None = setting(None, "Requested capture size (V4L2) or resize target "
                                "(network); set both or neither. null: native", Int(16, 16384))
    height: int | None = setting(None, "See `width`", Int(16, 16384))
    fps_limit: float | None = setting(None, "Take at most this many frames per second (null: "
                                      "all)", Num(0.0, 1000.0, lo_open=True))
    loop: bool = setting(True, "Files: start again at the end")
    realtime: bool = setting(True, "Files: deliver frames at the file's own frame rate, as a "
                             "camera would (false: as fast as they decode)")
    stall_timeout_s: float = setting(5.0, "Seconds without a frame before a source counts as "
                                     "stalled and is reopened", Num(0.1, 3600.0))
    reconnect_initial_s: float = setting(0.5, "First wait before reopening a failed source, "
                                         "doubling up to `reconnect_max_s`", Num(0.01, 3600.0))
    reconnect_max_s: float = setting(30.0, "Longest wait between reopen attempts (>= "
                                     "`reconnect_initial_s`)", Num(0.01, 3600.0))
    weight: int = setting(1, "Share of the inference when cameras contend: a camera of weight "
                          "2 gets twice the frames of one of weight 1", Int(1, 100))
    detection: Mapping[str, Any] = setting(
        doc="This camera's detection settings: any keys of `detection`, overriding the "
        "top-level ones (`class_thresholds` are merged), e.g. `{classes: [bird]}`",
        check=lambda v: _detection_overrides(v), factory=dict)

    zones: Mapping[str, Mapping[str, Any]] = setting(
        doc="Named zones: polygons of points `[x, y]` normalized to the frame (0..1, y down), "
        "optionally for some labels only: `{rail: {polygon: [[0.1, 0.6], [0.9, 0.6], [0.9, "
        "0.8]], labels: [bird]}}`. Events say which zones their object is in",
        check=_zones, factory=dict)
    masks: tuple[tuple[tuple[float, float], ...], ...] = setting(
        (), "Polygons whose detections are ignored by events (the plastic owl, the TV); det "
        "messages still carry them", _masks)

    def capture(self) -> CameraConfig:
        """What the capture thread uses: a change here (and only here) restarts it."""
        return dataclasses.replace(self, weight=1, detection={}, zones={}, masks=())


@dataclass(frozen=True)
class InferenceConfig:
    delegate: str = setting("auto", "`auto` (by SoC: i.MX 8M Plus: vx, i.MX 93: ethosu, else "
                            "cpu), " + ", ".join(BUILTIN_DELEGATES[1:]) + ", or a path to an "
                            "external delegate `.so`", check_delegate)
    delegate_options: Mapping[str, str] = setting(
        doc="Options for the delegate, passed as strings (booleans as `true`/`false`)",
        check=_options, factory=dict)
    require_accelerator: bool = setting(False, "Exit with code 3 instead of falling back to "
                                        "the CPU when the accelerator cannot be used")
    runtime: str = setting("auto", "TFLite runtime; auto: ai_edge_litert, then tflite_runtime, "
                           "then tensorflow.lite", OneOf(("auto", "ai_edge_litert",
                                                          "tflite_runtime", "tensorflow"), TEXT))
    threads: int = setting(2, "CPU threads of the interpreter (CPU backend and fallback)",
                           Int(1, 64))
    cache_dir: Path | None = setting(None, "NPU graph cache directory (null: no cache)", TEXT)
    watchdog_timeout_s: float = setting(
        10.0, "An invoke running longer than this counts as hung: the systemd watchdog pings "
        "stop (a camera that is down does not count)", Num(0.1, 3600.0))
    probe_delegate: bool = setting(
        True, "Try an NPU or external delegate (load, build, one invoke) in a child process "
        "first: one that crashes or hangs costs a CPU fallback instead of the daemon")
    probe_timeout_s: float = setting(300.0, "Bound on that probe, seconds", Num(1.0, 7200.0))
    self_check: bool = setting(
        True, "After the warm-up, run the bundled golden photographs through the accelerator "
        "and through a CPU interpreter of the same model; when their detections disagree, "
        "fall back to the CPU (exit 3 with `require_accelerator`). NPUs are known to return "
        "silently wrong YOLO outputs")
    self_check_min_agreement: float = setting(
        0.9, "Share of detections the accelerator and the CPU must both find (same class, "
        "IoU >= 0.8, scores within 0.1) for the accelerator to be used", UNIT)
    self_check_interval_h: float = setting(
        0.0, "Run the self-check again every this many hours while running (0: only when a "
        "model is loaded); a failure moves inference to the CPU from then on", Num(0.0, 8760.0))
    self_check_images: tuple[Path, ...] | None = setting(
        None, "Photographs for the self-check (null: the bundled ones, of COCO objects; a model "
        "of other classes needs photos of what it detects, or the check is inconclusive)",
        _image_paths)


@dataclass(frozen=True)
class EventsConfig:
    enabled: bool = setting(True, "Turn each camera's detections into events "
                            "(`event/<camera>/`): tracked objects that stayed")
    min_hits: int = setting(3, "An object becomes an event once seen in this many of the last "
                            "`window` frames (3 of 5: within 1 s at 5 fps)", Int(1, 1000))
    window: int = setting(5, "See `min_hits` (>= `min_hits`)", Int(1, 1000))
    min_score: float = setting(0.35, "... with a median score of at least this", UNIT)
    end_after_s: float = setting(5.0, "An event ends once its object has not been seen for this "
                                 "long", Num(0.1, 3600.0))
    stationary_after_s: float = setting(30.0, "An object that has not moved for this long is "
                                        "`stationary` (still one event, however long it "
                                        "stays)", Num(1.0, 86400.0))
    update_interval_s: float = setting(10.0, "At most one `update` per event this often (zone "
                                       "changes, a better snapshot, turning stationary)",
                                       Num(0.0, 86400.0))
    anchor: str = setting("bottom_center", "Point of a box that must be inside a zone (or "
                          "mask)", OneOf(ANCHORS, TEXT))
    history: Path | None = setting(
        None, "SQLite file of the event history (null: `$STATE_DIRECTORY/events.db` under "
        "systemd's `StateDirectory=`, else none)", TEXT)
    retention_days: float = setting(90.0, "Events (and snapshots) older than this are deleted",
                                    Num(0.01, 36500.0))
    snapshots: Path | None = setting(
        None, "Directory of each event's best frame as JPEG (null: `$STATE_DIRECTORY/snapshots` "
        "under systemd's `StateDirectory=`, else none)", TEXT)
    labels: Mapping[str, Mapping[str, Any]] = setting(
        doc="Per-label rules: any of " + ", ".join(f"`{k}`" for k in LABEL_RULES) + " for "
        "one label, overriding the ones above, e.g. `{bird: {end_after_s: 20}}`",
        check=lambda v: _label_rules(v), factory=dict)
    snapshot_quality: int = setting(85, "JPEG quality of snapshots", Int(1, 100))
    snapshot_crop: bool = setting(False, "Snapshots show the object's box with a margin "
                                  "around it instead of the whole frame (the box is drawn "
                                  "either way)")
    snapshot_max_mb: float = setting(500.0, "Snapshots take at most this much disk; the oldest "
                                     "go first", Num(1.0, 1e7))


@dataclass(frozen=True)
class CurveConfig:
    server_secret_key: Path = setting(doc="zmq certificate file with the server's secret key",
                                      check=_secret_key, shown="required with `curve`")
    authorized_keys_dir: Path | None = setting(None, "Directory of the client public "
                                               "certificates allowed (null: any client)", TEXT)


@dataclass(frozen=True)
class PublishConfig:
    endpoints: tuple[str, ...] = setting(("tcp://127.0.0.1:5556",), "ZeroMQ PUB endpoints: "
                                         "`tcp://HOST:PORT`, `ipc:///path`", _endpoints)
    ipc_mode: int = setting(0o660, "File mode of ipc socket files (an octal string)", _mode,
                            shown="`'0660'`")
    sndhwm: int = setting(1000, "Messages queued per subscriber before ZeroMQ drops for that "
                          "subscriber", Int(1, 1_000_000))
    linger_ms: int = setting(200, "How long closing may wait to flush the last messages (the "
                             "final status)", Int(0, 10_000))
    empty_frames: bool = setting(True, "Publish det messages for frames without detections too")
    status_interval_s: float = setting(1.0, "Seconds between status messages (one is also sent "
                                       "at every state change)", Num(0.05, 3600.0))
    curve: CurveConfig | None = setting(None, "CURVE encryption and access control for tcp "
                                        "endpoints (null: off)")


def _topic(v: Any) -> str:
    t = TEXT(v)
    if not t or any(c in t for c in "+#\0") or t.startswith("/") or t.endswith("/") or \
            len(t.encode()) > 1024:
        raise Invalid(f"expected an MQTT topic without +, #, or a leading or trailing /, "
                      f"got {show(v)}")
    return t


QOS = Int(0, 2)


@dataclass(frozen=True)
class MqttQos:
    events: int = setting(1, "QoS of event messages (delivered from the event history after "
                          "an outage)", QOS)
    counts: int = setting(1, "QoS of the retained occupancy counts", QOS)
    snapshots: int = setting(0, "QoS of the retained snapshot JPEGs", QOS)
    status: int = setting(0, "QoS of status messages", QOS)
    detections: int = setting(0, "QoS of per-frame detections (`mqtt.detections`)", QOS)


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = setting(False, "Publish events, counts, snapshots and status to an MQTT "
                            "broker, with Home Assistant discovery (needs the `mqtt` extra: "
                            "paho-mqtt)")
    host: str = setting("localhost", "Broker host name or address", TEXT)
    port: int = setting(1883, "Broker port (8883 is usual with TLS)", Int(1, 65535))
    username: str | None = setting(None, "User name (null: anonymous)", TEXT)
    password_file: Path | None = setting(None, "File whose first line is the password (read "
                                         "at start and reload, never logged)", TEXT)
    tls: bool = setting(False, "Connect with TLS, verifying the broker against the system's "
                        "CAs or `tls_ca_file`")
    tls_ca_file: Path | None = setting(None, "CA certificate(s) of the broker (PEM); implies "
                                       "`tls`", TEXT)
    tls_cert_file: Path | None = setting(None, "Client certificate (PEM), with "
                                         "`tls_key_file`, for brokers that require one", TEXT)
    tls_key_file: Path | None = setting(None, "Client private key (PEM)", TEXT)
    node: str | None = setting(None, "This board's name in topics and in Home Assistant "
                               "(null: the host name)", _name)
    client_id: str | None = setting(None, "MQTT client id (null: `edged-<node>`)", TEXT)
    base_topic: str | None = setting(None, "Topic prefix (null: `edged/<node>`)", _topic)
    keepalive_s: int = setting(30, "Seconds between keepalives; the broker declares edged "
                               "gone (and publishes `offline`) after 1.5 times this",
                               Int(5, 3600))
    qos: MqttQos = setting(factory=MqttQos)
    status_interval_s: float = setting(30.0, "Seconds between status messages on MQTT (one "
                                       "is also sent at every state change)", Num(1.0, 86400.0))
    detections: bool = setting(False, "Also publish per-frame detections "
                               "(`<base>/<camera>/detections`), rate-limited")
    detections_max_hz: float = setting(1.0, "At most this many detection messages per second "
                                       "and camera", Num(0.0, 100.0, lo_open=True))
    discovery: bool = setting(True, "Announce entities to Home Assistant (MQTT discovery)")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery prefix",
                                    _topic)
    discovery_labels: tuple[str, ...] | None = setting(
        None, "Labels that get Home Assistant entities on every camera (null: each camera's "
        "`detection.classes`, its zones' labels and `events.labels`)", _labels)


def _endpoint(v: Any) -> str:
    ep = TEXT(v)
    problem = check_endpoint(ep)
    if problem:
        raise Invalid(f"{problem}, got {show(v)}")
    return ep


@dataclass(frozen=True)
class FrigateConfig:
    enabled: bool = setting(False, "Answer Frigate's `zmq` detector: Frigate sends its "
                            "detection requests to edged's model and accelerator (README: "
                            "Frigate)")
    endpoint: str = setting("tcp://127.0.0.1:5555", "ZeroMQ REP endpoint Frigate's detector "
                            "`endpoint` connects to: `tcp://HOST:PORT` (loopback unless you "
                            "give another address) or `ipc:///path`", _endpoint)
    ipc_mode: int = setting(0o660, "File mode of an ipc socket file (an octal string)", _mode,
                            shown="`'0660'`")
    pixel_format: str = setting("rgb", "Frigate's `model.input_pixel_format`: the colour order "
                                "of the tensors it sends", OneOf(("rgb", "bgr"), TEXT))
    input_tensor: str = setting("nhwc", "Frigate's `model.input_tensor`: `nhwc` [1, H, W, 3] "
                                "or `nchw` [1, 3, H, W]", OneOf(("nhwc", "nchw"), TEXT))
    input_dtype: str = setting("int", "Frigate's `model.input_dtype`: `int` (uint8), `float` "
                               "(float32 0..1) or `float_denorm` (float32 0..255)",
                               OneOf(("int", "float", "float_denorm"), TEXT))
    request_timeout_ms: int = setting(200, "Frigate's `request_timeout_ms`: an answer later "
                                      "than this is counted `late` in the status (Frigate has "
                                      "given up on it)", Int(1, 60_000))
    curve: CurveConfig | None = setting(None, "CURVE encryption and access control for a tcp "
                                        "endpoint, as `publish.curve` (Frigate's own client "
                                        "has none: for other clients; null: off)")


@dataclass(frozen=True)
class Config:
    camera: CameraConfig = setting(factory=CameraConfig, doc="One camera: the shorthand for a "
                                   "`cameras` list of one")
    cameras: tuple[CameraConfig, ...] = setting((), "Several cameras sharing the model and the "
                                                "accelerator: a list of mappings with the keys "
                                                f"of `camera` (names unique; at most "
                                                f"{MAX_CAMERAS})", shown="`[camera]`")
    model: Path = setting(DEFAULT_MODEL, "The model sidecar `.yaml` written by `edged export`",
                          TEXT, null_default=True, shown="the shipped yolov3-tiny")
    inference: InferenceConfig = setting(factory=InferenceConfig)
    detection: DetectionConfig = setting(factory=DetectionConfig)
    events: EventsConfig = setting(factory=EventsConfig)
    publish: PublishConfig = setting(factory=PublishConfig)
    mqtt: MqttConfig = setting(factory=MqttConfig)
    frigate: FrigateConfig = setting(factory=FrigateConfig)
    log_level: str = setting("info", "Log level", OneOf(("debug", "info", "warning", "error"),
                                                         TEXT))
    source: str = setting("<built-in default>", key=False)  # where it was loaded from

    def __post_init__(self) -> None:
        if not self.cameras:  # the shorthand (or nothing: the sample camera)
            object.__setattr__(self, "cameras", (self.camera,))

    def detection_for(self, cam: CameraConfig) -> DetectionConfig:
        """``detection`` with the camera's own keys applied (its ``class_thresholds`` merged
        into the top-level ones)."""
        if not cam.detection:
            return self.detection
        own = dict(cam.detection)
        if "class_thresholds" in own:  # merged: the camera's labels over the top-level ones
            own["class_thresholds"] = {**self.detection.class_thresholds,
                                       **own["class_thresholds"]}
        return dataclasses.replace(self.detection, **own)


def watched_labels(cfg: Config, cam: CameraConfig) -> tuple[str, ...]:
    """The labels a camera watches: its ``detection.classes``, its zones' labels and
    ``events.labels``, in that order (its occupancy lists them from the start; MQTT discovery
    announces them)."""
    classes = cfg.detection_for(cam).classes or ()
    in_zones = sorted({str(lb) for z in cam.zones.values() for lb in z["labels"] or ()})
    return tuple(dict.fromkeys([*classes, *in_zones, *cfg.events.labels]))


def _detection_overrides(v: Any) -> dict[str, Any]:
    keys = {f.name: f for f in dataclasses.fields(DetectionConfig)}
    v = mapping(v)
    no_unknown(v, set(keys), listed=False)
    return {k: None if x is None and keys[k].default is None
            else below(f".{k}", keys[k].metadata["check"], x) for k, x in v.items()}


def _label_rules(v: Any) -> dict[str, dict[str, Any]]:
    checks = {f.name: f.metadata["check"] for f in dataclasses.fields(EventsConfig)
              if f.name in LABEL_RULES}

    def one(rules: Any) -> dict[str, Any]:
        rules = mapping(rules)
        no_unknown(rules, set(checks), listed=True)
        return {k: below(f".{k}", checks[k], x) for k, x in rules.items()}

    out: dict[str, dict[str, Any]] = map_of(one)(mapping(v))
    return out


def default_config() -> Config:
    return Config()


# --- validation ---------------------------------------------------------------------------

def parse_config(data: Any, where: str = "config") -> Config:
    r = Reader(where, ConfigError)
    data = {} if data is None else data
    if isinstance(data, dict) and data.get("camera") is not None and "cameras" in data:
        raise r.fail("cameras", "give either camera (one camera) or cameras (a list), not both")
    if isinstance(data, dict) and data.get("cameras") == []:
        raise r.fail("cameras", "expected at least one camera (or remove the key)")
    cfg: Config = r.section(Config, data)
    listed = isinstance(data, dict) and data.get("cameras") is not None
    cfg = _cross(cfg, r, listed)
    # camera: the first camera in both forms, so moving one camera between them is no change
    return dataclasses.replace(cfg, camera=cfg.cameras[0], source=where)


def _cross(cfg: Config, r: Reader, listed: bool = False) -> Config:
    """What one value cannot say alone: pairs of keys, the model's labels, files."""
    curve = cfg.publish.curve
    if len(cfg.cameras) > MAX_CAMERAS:
        raise r.fail("cameras", f"at most {MAX_CAMERAS} cameras, got {len(cfg.cameras)}")
    names: dict[str, int] = {}
    for i, cam in enumerate(cfg.cameras):
        at = f"cameras[{i}]" if listed else "camera"
        if cam.name in names:
            raise r.fail(f"{at}.name", f"{show(cam.name)} is also the name of "
                         f"cameras[{names[cam.name]}]; camera names must be unique")
        names[cam.name] = i
        if classify_source(cam.source) == "file" and not Path(cam.source).is_file():
            raise r.fail(f"{at}.source",
                         f"file {cam.source} not found (a device, URL or pipeline also works)")
        if (cam.width is None) != (cam.height is None):
            raise r.fail(f"{at}.width", "set both width and height, or neither")
        if cam.reconnect_max_s < cam.reconnect_initial_s:
            raise r.fail(f"{at}.reconnect_max_s", "must be >= reconnect_initial_s")
    for i, image in enumerate(cfg.inference.self_check_images or ()):
        if not image.is_file():
            raise r.fail(f"inference.self_check_images[{i}]", f"file {image} not found")
    delegate = cfg.inference.delegate
    if delegate.startswith("/") and not Path(delegate).is_file():
        raise r.fail("inference.delegate", f"delegate library {delegate} not found")
    if not cfg.model.is_file():
        raise r.fail("model", f"model sidecar {cfg.model} not found")
    try:
        labels = sidecar.load(cfg.model).labels
    except ModelError as e:
        raise ConfigError(f"{r.where}: model: {e}") from e
    detection = _labelled(cfg.detection, "detection", labels, r)
    cameras = tuple(dataclasses.replace(cam, detection=_labelled(
        cam.detection, f"{f'cameras[{i}]' if listed else 'camera'}.detection", labels, r))
        for i, cam in enumerate(cfg.cameras))
    for i, cam in enumerate(cfg.cameras):
        at = f"cameras[{i}]" if listed else "camera"
        for name, zone in cam.zones.items():
            for j, label in enumerate(zone["labels"] or ()):
                if label not in labels:
                    raise r.fail(f"{at}.zones.{name}.labels[{j}]", _unknown(label, labels))
    if cfg.events.window < cfg.events.min_hits:
        raise r.fail("events.window", "must be >= min_hits")
    for label, own in cfg.events.labels.items():
        if label not in labels:
            raise r.fail(f"events.labels.{show(label)}", _unknown(label, labels))
        window = own.get("window", cfg.events.window)
        hits = own.get("min_hits", cfg.events.min_hits)
        if window < hits:
            key = "window" if "window" in own else "min_hits"
            raise r.fail(f"events.labels.{show(label)}.{key}", f"window ({window}) must be >= "
                         f"min_hits ({hits}; the label's own or the one of events)")
    _cross_curve(curve, cfg.publish.endpoints, "publish", r)
    _cross_mqtt(cfg.mqtt, labels, r)
    if cfg.frigate.endpoint in cfg.publish.endpoints:
        raise r.fail("frigate.endpoint", f"{cfg.frigate.endpoint} is also in "
                     "publish.endpoints; give Frigate its own endpoint")
    _cross_curve(cfg.frigate.curve, (cfg.frigate.endpoint,), "frigate", r)
    return dataclasses.replace(cfg, detection=detection, cameras=cameras)


def _cross_curve(curve: CurveConfig | None, endpoints: tuple[str, ...], section: str,
                 r: Reader) -> None:
    if curve is None:
        return
    if not curve.server_secret_key.is_file():
        raise r.fail(f"{section}.curve.server_secret_key",
                     f"file {curve.server_secret_key} not found")
    if any(not e.startswith("tcp://") for e in endpoints):
        raise r.fail(f"{section}.curve",
                     "CURVE applies to tcp endpoints; remove the ipc ones or curve")
    keys = curve.authorized_keys_dir
    if keys is not None and not keys.is_dir():
        raise r.fail(f"{section}.curve.authorized_keys_dir", f"directory {keys} not found")


def _cross_mqtt(m: MqttConfig, labels: tuple[str, ...], r: Reader) -> None:
    for key in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(m, key)
        if path is not None and not path.is_file():
            raise r.fail(f"mqtt.{key}", f"file {path} not found")
    if (m.tls_cert_file is None) != (m.tls_key_file is None):
        raise r.fail("mqtt.tls_cert_file", "set both tls_cert_file and tls_key_file, or neither")
    for i, label in enumerate(m.discovery_labels or ()):
        if label not in labels:
            raise r.fail(f"mqtt.discovery_labels[{i}]", _unknown(label, labels))


Det = Any  # DetectionConfig, or a camera's overrides of it (a mapping)


def _labelled(det: Det, at: str, labels: tuple[str, ...], r: Reader) -> Det:
    """``det`` with its labels checked against the model's, its class thresholds' values
    checked (a misspelt label is reported first, as it is typed)."""
    get = det.get if isinstance(det, Mapping) else lambda k, d=None: getattr(det, k, d)
    thresholds = {}
    for label, value in (get("class_thresholds") or {}).items():
        if label not in labels:
            raise r.fail(f"{at}.class_thresholds.{show(label)}", _unknown(label, labels))
        thresholds[label] = r.at(UNIT, value, f"{at}.class_thresholds.{label}")
    for i, label in enumerate(get("classes") or ()):
        if label not in labels:
            raise r.fail(f"{at}.classes[{i}]", _unknown(label, labels))
    if isinstance(det, Mapping):
        return {**det, "class_thresholds": thresholds} if "class_thresholds" in det else det
    return dataclasses.replace(det, class_thresholds=thresholds)


def _unknown(label: Any, labels: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(label, labels, 1) if isinstance(label, str) and \
        len(label) <= 100 else []
    return f"{show(label)} is not a label of the model" + (f" (did you mean '{near[0]}'?)"
                                                           if near else "")


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


def reference() -> str:
    """The README's config reference table (tests/test_config_reference.py keeps them equal)."""
    return markdown(Config)


if __name__ == "__main__" and sys.argv[1:] == ["--markdown"]:
    print(reference(), end="")
