"""Config validation: the example is complete and valid; every mistake gives one line naming the
key or resource, exit code 2, no traceback (real subprocesses)."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from edged.config import Config, parse_config
from edged.errors import EXIT_USAGE
from edged.media import SAMPLE_CLIP
from tests.conftest import REPO, one_line_error, run_edged
from tests.daemon_util import free_port, write_config

EXAMPLE = REPO / "config.example.yaml"


def test_example_config_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    proc = run_edged("check-config", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    data = yaml.safe_load(EXAMPLE.read_text())
    documented = set(data) | {f"{s}.{k}" for s, v in data.items() if isinstance(v, dict)
                              for k in v}
    fields = {"camera", "model", "inference", "detection", "publish", "log_level"}
    for section, cls in (("camera", "CameraConfig"), ("inference", "InferenceConfig"),
                         ("detection", "DetectionConfig"), ("publish", "PublishConfig")):
        import edged.config as c
        fields |= {f"{section}.{f.name}" for f in dataclasses.fields(getattr(c, cls))}
    assert fields <= documented, fields - documented
    text = EXAMPLE.read_text()
    for key in ("server_secret_key", "authorized_keys_dir"):
        assert key in text


def _base() -> dict[str, Any]:
    return {"camera": {"name": "cam", "source": str(SAMPLE_CLIP)},
            "publish": {"endpoints": ["tcp://127.0.0.1:5999"]}}


def _with(path: str, value: Any) -> dict[str, Any]:
    cfg = _base()
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return cfg


CASES: list[tuple[str, Any, str]] = [
    ("unknown top key", {**_base(), "camra": {}}, "camra: unknown key (did you mean 'camera'?)"),
    ("unknown nested key", _with("camera.sorce", "x"), "camera.sorce: unknown key"),
    ("section not a mapping", {**_base(), "detection": [1, 2]}, "detection: expected a mapping"),
    ("wrong type", _with("detection.conf_threshold", "high"), "detection.conf_threshold"),
    ("threshold out of range", _with("detection.conf_threshold", 1.5), "in [0, 1]"),
    ("iou out of range", _with("detection.iou_threshold", -0.1), "detection.iou_threshold"),
    ("max detections zero", _with("detection.max_detections", 0), "detection.max_detections"),
    ("unknown label", _with("detection.classes", ["pigeon"]), "detection.classes[0]"),
    ("unknown label threshold", _with("detection.class_thresholds", {"brid": 0.3}),
     "did you mean 'bird'"),
    ("label threshold range", _with("detection.class_thresholds", {"bird": 2}),
     "detection.class_thresholds.bird"),
    # a misspelt label is the news, even when its value is also out of range
    ("unknown label, bad value", _with("detection.class_thresholds", {"brid": 5}),
     "'brid' is not a label of the model (did you mean 'bird'?)"),
    ("missing model file", {**_base(), "model": "/nope/model.yaml"}, "model: model sidecar"),
    ("unknown delegate", _with("inference.delegate", "tpu"), "inference.delegate: must be one"),
    ("delegate path missing", _with("inference.delegate", "/nope/libx.so"), "not found"),
    ("threads zero", _with("inference.threads", 0), "inference.threads"),
    ("unknown runtime", _with("inference.runtime", "onnx"), "inference.runtime"),
    ("bad endpoint", _with("publish.endpoints", ["udp://1.2.3.4:5"]), "publish.endpoints[0]"),
    ("port out of range", _with("publish.endpoints", ["tcp://127.0.0.1:70000"]),
     "port 70000 out of range"),
    ("duplicate endpoint", _with("publish.endpoints", ["tcp://127.0.0.1:1", "tcp://127.0.0.1:1"]),
     "publish.endpoints: lists an endpoint twice"),
    ("bad ipc mode", _with("publish.ipc_mode", "rw-rw----"), "publish.ipc_mode"),
    ("curve key missing", _with("publish.curve", {"server_secret_key": "/nope.key_secret"}),
     "publish.curve.server_secret_key: file /nope.key_secret not found"),
    ("bad camera name", _with("camera.name", "my camera!"), "camera.name"),
    ("width without height", _with("camera.width", 640), "camera.width: set both"),
    ("backoff order", {**_base(), "camera": {**_base()["camera"], "reconnect_initial_s": 5,
                                             "reconnect_max_s": 1}}, "camera.reconnect_max_s"),
    ("missing source file", _with("camera.source", "/nope/clip.mp4"), "camera.source: file"),
    ("bool as number", _with("camera.loop", "yes"), "camera.loop: expected true or false"),
    ("log level", {**_base(), "log_level": "loud"}, "log_level"),
]


@pytest.mark.parametrize(("case", "data", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_config(case: str, data: Any, message: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", **data)
    proc = run_edged("check-config", str(cfg))
    assert proc.returncode == EXIT_USAGE
    line = one_line_error(proc)
    assert message in line and str(cfg) in line


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera:\n  name: [unclosed\n")
    line = one_line_error(run_edged("check-config", str(bad)))
    assert "not valid YAML at line" in line
    proc = run_edged("run", "--config", str(tmp_path / "none.yaml"))
    assert proc.returncode == EXIT_USAGE
    assert "cannot read config" in one_line_error(proc)


def test_empty_config_file_is_an_error(tmp_path: Path) -> None:
    """Not "all defaults": a half-written file read by a SIGHUP would rebind the socket."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    assert "the file is empty" in one_line_error(run_edged("check-config", str(empty)))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    assert "expected a mapping" in one_line_error(run_edged("check-config", str(f)))


def test_busy_tcp_port(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        cfg = write_config(tmp_path / "c.yaml", **_with("publish.endpoints",
                                                        [f"tcp://127.0.0.1:{port}"]))
        proc = run_edged("run", "--config", str(cfg), timeout=60)
    assert proc.returncode == EXIT_USAGE
    line = one_line_error(proc)
    assert f"publish.endpoints[0]: cannot bind tcp://127.0.0.1:{port}" in line
    assert "in use" in line


def test_ipc_path_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "edged.sock"
    ctx = zmq.Context()
    other = ctx.socket(zmq.PUB)
    other.bind(f"ipc://{path}")
    try:
        cfg = write_config(tmp_path / "c.yaml", **_with("publish.endpoints", [f"ipc://{path}"]))
        proc = run_edged("run", "--config", str(cfg), timeout=60)
    finally:
        other.close(linger=0)
        ctx.term()
    assert proc.returncode == EXIT_USAGE
    line = one_line_error(proc)
    assert str(path) in line and "in use by another process" in line


def test_stale_ipc_file_is_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a crashed edged leaves behind
    cfg = parse_config(_with("publish.endpoints", [f"ipc://{path}"]), "test")
    assert isinstance(cfg, Config)
    from edged.pipeline.publish import Publisher
    from tests.test_messages import STATUS

    pub = Publisher(cfg.publish, lambda: [STATUS])
    pub.bind()
    try:
        assert path.exists() and oct(path.stat().st_mode & 0o777) == oct(0o660)
    finally:
        pub.start()
        pub.stop()
        pub.join(2)


# --- several cameras ---------------------------------------------------------------------------

def _cameras(*cams: dict[str, Any], **top: Any) -> Config:
    return parse_config({"cameras": [{"source": str(SAMPLE_CLIP), **c} for c in cams], **top})


def test_a_camera_overrides_only_the_detection_keys_it_gives() -> None:
    cfg = _cameras({"name": "a", "detection": {"classes": ["bird"],
                                               "class_thresholds": {"cat": 0.5}}},
                   {"name": "b"},
                   detection={"conf_threshold": 0.3, "class_thresholds": {"bird": 0.9}})
    a, b = (cfg.detection_for(c) for c in cfg.cameras)
    assert b == cfg.detection and b.conf_threshold == 0.3
    assert a.conf_threshold == 0.3 and a.classes == ("bird",)
    assert a.class_thresholds == {"bird": 0.9, "cat": 0.5}  # merged, not replaced


def test_camera_shorthand_and_list_are_the_same_camera() -> None:
    one = parse_config({"camera": {"name": "a", "source": str(SAMPLE_CLIP)}})
    listed = _cameras({"name": "a"})
    assert one.cameras == listed.cameras and len(one.cameras) == 1
    assert one == listed  # so a reload moving a camera between the forms is "unchanged"
    assert parse_config({"camera": None, "cameras": [{"name": "a"}]}).cameras[0].name == "a"


@pytest.mark.parametrize(("data", "message"), [
    ({"cameras": [{"name": "a"}, {"name": "a"}]},
     "cameras[1].name: 'a' is also the name of cameras[0]; camera names must be unique"),
    ({"cameras": []}, "cameras: expected at least one camera"),
    ({"cameras": [{"name": ".."}]}, "cameras[0].name: use 1-64 letters, digits"),  # a path
    ({"cameras": [{"name": f"c{i}"} for i in range(17)]}, "cameras: at most 16 cameras, got 17"),
    ({"cameras": [{"name": "a", "detection": {"classes": ["brd"]}}]},
     "cameras[0].detection.classes[0]: 'brd' is not a label of the model (did you mean 'bird'?)"),
    ({"cameras": [{"name": "a", "detection": {"conf_treshold": 0.2}}]},
     "cameras[0].detection.conf_treshold: unknown key (did you mean 'conf_threshold'?)"),
    ({"cameras": [{"name": "a", "weight": 0}]},
     "cameras[0].weight: expected an integer in [1, 100], got 0"),
    ({"camera": {"name": "a"}, "cameras": [{"name": "b"}]},
     "cameras: give either camera (one camera) or cameras (a list), not both"),
])
def test_bad_cameras(data: dict[str, Any], message: str) -> None:
    from edged.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(data, "c.yaml")
    assert str(err.value).startswith(f"c.yaml: {message}"), str(err.value)
