"""The MQTT bridge (issue 14) against a real mosquitto on loopback (Debian's package; with a
password file, with TLS and a client certificate) and a real `edged run` on the bundled clip (an
eagle crossing the frame: a bird on every frame). What arrives is read by a real paho subscriber
(tests/mqtt_broker.py); what edged sent on ZeroMQ at the same time is the reference for what
MQTT must carry."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.api.history import BUSY_TIMEOUT_S, OUTBOX, open_history, record
from edged.config import parse_config
from edged.media import SAMPLE_CLIP
from edged.pipeline.mqtt import MqttBridge, camera_specs
from tests.conftest import REPO, one_line_error, run_edged
from tests.daemon_util import Daemon, Listener, write_config
from tests.mqtt_broker import Broker, Received, Recorder
from tests.test_history import NS, at, event
from tests.timing import Speed

pytest.importorskip("paho.mqtt", reason="the mqtt extra (paho-mqtt) is not installed")

NODE = "n1"
BASE = f"edged/{NODE}"
LEFT = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
RIGHT = [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]
USER, PASSWORD = "edged", "s3cret pass"  # a space: the file's whole first line is the password

# Keys Home Assistant requires of a discovered entity, per platform (docs, 2026):
# - binary_sensor https://www.home-assistant.io/integrations/binary_sensor.mqtt/ and sensor
#   https://www.home-assistant.io/integrations/sensor.mqtt/: `state_topic` (both extend
#   MQTT_RO_SCHEMA, homeassistant/components/mqtt/config.py: vol.Required(CONF_STATE_TOPIC));
# - image https://www.home-assistant.io/integrations/image.mqtt/: exactly one of `image_topic`
#   and `url_topic`;
# - discovery https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery: a `device` needs
#   `identifiers` (or `connections`) and the entity a `unique_id`; `availability_topic` with
#   `payload_available`/`payload_not_available` marks it unavailable when edged is gone.
REQUIRED = {"binary_sensor": {"state_topic"}, "sensor": {"state_topic"},
            "image": {"image_topic"}}
COMMON = {"unique_id", "device", "availability_topic", "payload_available",
          "payload_not_available"}


def _config(tmp: Path, broker: Broker, mqtt: dict[str, Any] | None = None,
            events: dict[str, Any] | None = None, **sections: Any) -> Path:
    if "cameras" not in sections:
        sections.setdefault("camera", {"name": "roof", "source": str(SAMPLE_CLIP),
                                       "zones": {"left": LEFT, "right": RIGHT},
                                       "detection": {"classes": ["bird"]}})
    return write_config(
        tmp / "edged.yaml", **sections,
        events={"history": str(tmp / "events.db"), "snapshots": str(tmp / "snaps"),
                **(events or {})},
        publish={"endpoints": [f"ipc://{tmp}/edged.sock"], "status_interval_s": 0.2},
        mqtt={"enabled": True, "host": broker.host, "port": broker.port, "node": NODE,
              "keepalive_s": 5, "status_interval_s": 1, **(mqtt or {})})


def _password_file(tmp: Path) -> str:
    path = tmp / "mqtt.pass"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return str(path)


def _event_key(m: dict[str, Any]) -> tuple[str, str, int]:
    return (m["id"], m["phase"], m["ts_ns"])


def _mqtt_events(rec: Recorder) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in rec.messages(f"{BASE}/events")]


def _zmq_events(sub: Listener) -> list[dict[str, Any]]:
    return [m for t, m, _ in sub.messages if t.startswith("event/")]


def _each_once_in_order(rec: Recorder, zmq_events: list[dict[str, Any]],
                        speed: Speed) -> list[tuple[str, str, int]]:
    """The event messages edged published reach MQTT, every one, once, in order."""
    want = [_event_key(m) for m in zmq_events]
    rec.wait(lambda r: len(_mqtt_events(rec)) >= len(want), speed.deadline(),
             f"{len(want)} event messages")
    assert [_event_key(m) for m in _mqtt_events(rec)] == want
    return want


def _mqtt_state(sub: Listener, pred: Any, timeout_s: float, what: str) -> str:
    _, st, _ = sub.wait_until(lambda m: m[0] == "process/" and m[1]["mqtt"] is not None and
                              pred(m[1]["mqtt"]), timeout_s, what)
    return str(st["mqtt"])


def test_events_counts_snapshots_status_and_discovery_arrive_retained_as_they_should(
        tmp_path: Path, speed: Speed) -> None:
    broker = Broker(tmp_path, users={USER: PASSWORD, "ha": "ha"})
    with broker:
        cfg = _config(tmp_path, broker, {"username": USER,
                                         "password_file": _password_file(tmp_path)})
        with Recorder(broker, [("#", 2)], user="ha") as live, Daemon(tmp_path, cfg) as d, \
                Listener(f"ipc://{tmp_path}/edged.sock", ("event/", "process/")) as sub:
            live.wait(lambda r: r.topic == f"{BASE}/events" and
                      json.loads(r.payload)["phase"] == "start",
                      speed.start_deadline(base_s=5.0), "the bird's event start on MQTT")
            snap = live.wait(lambda r: r.topic == f"{BASE}/roof/bird/snapshot",
                             speed.deadline(), "its snapshot")
            live.wait(lambda r: r.topic == f"{BASE}/roof/bird" and r.payload == b"1",
                      speed.deadline(), "the bird counted")
            live.wait(lambda r: r.topic == f"{BASE}/roof/status", speed.deadline(),
                      "a camera status")
            # "connected to ... (1 events unacknowledged)" is true while an event is in flight
            settled = f"connected to {broker.host}:{broker.port}"
            _mqtt_state(sub, lambda s: s == settled, speed.deadline(),
                        f"the status saying {settled!r}")
            assert PASSWORD not in d.stderr
            # what a client connecting now gets: the retained topics, with the retain flag
            with Recorder(broker, [(f"{BASE}/#", 2), ("homeassistant/#", 2)], user="ha") as late:
                late.wait(lambda r: r.topic == f"{BASE}/roof/bird/snapshot", speed.deadline(),
                          "the retained snapshot")
                late.wait(lambda r: r.topic.endswith("roof_bird_snapshot/config"),
                          speed.deadline(), "the retained discovery configs")
                retained = {r.topic: r for r in late.messages() if r.retain}
            code, _ = d.stop()
            sub.drain()
        assert code == 0, d.stderr[-3000:]
        live.wait(lambda r: r.topic == f"{BASE}/available" and r.payload == b"offline",
                  speed.deadline(), "offline at a clean stop")
        messages = live.messages()
    # QoS as published (the subscription asked for 2: the broker delivers min(pub, sub))
    by_topic: dict[str, list[Received]] = {}
    for r in messages:
        by_topic.setdefault(r.topic, []).append(r)
    assert {r.qos for r in by_topic[f"{BASE}/events"]} == {1}
    assert {r.qos for r in by_topic[f"{BASE}/roof/bird"]} == {1}
    assert {r.qos for r in by_topic[f"{BASE}/roof/bird/snapshot"]} == {0}
    assert {r.qos for r in by_topic[f"{BASE}/roof/status"]} == {0}
    # online at QoS 1; the final offline at QoS 0: sent at once, never behind a full window
    assert [(r.payload, r.qos) for r in by_topic[f"{BASE}/available"]] == \
        [(b"online", 1), (b"offline", 0)]
    assert f"{BASE}/roof/detections" not in by_topic  # off by default
    # retained: availability, counts (frame and zones), snapshots, discovery; not events/status
    assert retained[f"{BASE}/available"].payload == b"online"
    assert {f"{BASE}/roof/bird", f"{BASE}/roof/zone/left/bird", f"{BASE}/roof/zone/right/bird",
            f"{BASE}/roof/bird/snapshot"} <= set(retained)
    assert f"{BASE}/events" not in retained and f"{BASE}/roof/status" not in retained
    assert f"{BASE}/status" not in retained
    pic = cv2.imdecode(np.frombuffer(retained[f"{BASE}/roof/bird/snapshot"].payload, np.uint8),
                       cv2.IMREAD_COLOR)
    assert pic is not None and pic.shape == (720, 1280, 3)
    assert snap.payload[:2] == b"\xff\xd8"  # a JPEG
    # events: the same messages as on ZeroMQ, in the same order (schema v2 JSON)
    mqtt_events = [json.loads(r.payload) for r in by_topic[f"{BASE}/events"]]
    assert [_event_key(m) for m in mqtt_events] == [_event_key(m) for m in _zmq_events(sub)]
    assert mqtt_events[-1]["phase"] == "end" and mqtt_events[-1]["end_reason"] == "shutdown"
    # discovery: one device, per label an occupancy binary_sensor, a count sensor and an image
    configs = {t: json.loads(r.payload) for t, r in retained.items()
               if t.startswith("homeassistant/")}
    assert {t.split("/")[1] for t in configs} == {"binary_sensor", "sensor", "image"}
    node_id = "edged_n1"
    occupancy = configs[f"homeassistant/binary_sensor/{node_id}/roof_bird_occupancy/config"]
    assert occupancy["state_topic"] == f"{BASE}/roof/bird"
    assert occupancy["device_class"] == "occupancy"
    count = configs[f"homeassistant/sensor/{node_id}/roof_bird_count/config"]
    assert count["state_topic"] == f"{BASE}/roof/bird"
    image = configs[f"homeassistant/image/{node_id}/roof_bird_snapshot/config"]
    assert image["image_topic"] == f"{BASE}/roof/bird/snapshot" and "url_topic" not in image
    diagnostics = ("roof_fps", "roof_state", "backend", "fallback_reason")
    assert {f"homeassistant/sensor/{node_id}/{k}/config" for k in diagnostics} <= set(configs)
    for topic, payload in configs.items():
        platform = topic.split("/")[1]
        assert REQUIRED[platform] | COMMON <= set(payload), (topic, payload)
        assert payload["device"]["identifiers"] == [node_id]
        assert payload["availability_topic"] == f"{BASE}/available"
    assert len({p["unique_id"] for p in configs.values()}) == len(configs)
    # the value template turns a count into the binary sensor's payloads (Jinja, as HA does)
    import jinja2  # the test extra; Home Assistant's templates are Jinja

    tpl = jinja2.Template(occupancy["value_template"])
    assert (tpl.render(value="0"), tpl.render(value="2")) == ("OFF", "ON")


def test_tls_with_a_client_certificate_and_a_refused_login_in_the_status(
        tmp_path: Path, speed: Speed) -> None:
    broker = Broker(tmp_path, users={USER: PASSWORD}, tls=True, require_certificate=True)
    assert broker.ca and broker.client_cert and broker.client_key
    tls = {"tls_ca_file": str(broker.ca), "tls_cert_file": str(broker.client_cert),
           "tls_key_file": str(broker.client_key), "username": USER,
           "password_file": _password_file(tmp_path)}
    with broker, Recorder(broker, [(f"{BASE}/#", 1)], user=USER) as rec:
        cfg = _config(tmp_path, broker, {**tls, "detections": True, "detections_max_hz": 2})
        with Daemon(tmp_path, cfg) as d:
            rec.wait(lambda r: r.topic == f"{BASE}/events", speed.start_deadline(base_s=5.0),
                     "an event over TLS")
            rec.wait(lambda r: len(rec.messages(f"{BASE}/roof/detections")) >= 3,
                     speed.deadline(n_frames=75), "detections at 2 per second")
            code, _ = d.stop()
        assert code == 0, d.stderr[-3000:]
        # per-frame detections, at most 2 a second although the clip runs at 25 fps
        dets = [json.loads(r.payload) for r in rec.messages(f"{BASE}/roof/detections")]
        assert all(m["kind"] == "detections" and m["camera"] == "roof" for m in dets)
        gaps = [(b["ts_ns"] - a["ts_ns"]) / 1e9 for a, b in itertools.pairwise(dets)]
        assert min(gaps) >= 0.5 - 0.1, gaps  # a frame's capture time: +/- a frame period
        # a wrong password: edged runs on, and its status says why MQTT is not connected
        (tmp_path / "mqtt.pass").write_text("wrong\n")
        with Daemon(tmp_path, cfg) as d, \
                Listener(f"ipc://{tmp_path}/edged.sock", ("process/", "det/")) as sub:
            state = _mqtt_state(sub, lambda s: s.startswith("refused"),
                                speed.start_deadline(base_s=5.0), "the refusal in the status")
            assert "not authorized" in state.lower() or "bad user name" in state.lower(), state
            sub.wait_until(lambda m: m[0] == "det/roof/", speed.deadline(), "detections go on")
            # the password fixed in its file (the config unchanged): a reload reconnects
            _password_file(tmp_path)
            d.signal(signal.SIGHUP)
            _mqtt_state(sub, lambda s: s.startswith("connected"), 10 + speed.deadline(),
                        "connected after the reload")
            code, _ = d.stop()
        assert code == 0, d.stderr[-3000:]
        assert "wrong" not in d.stderr and PASSWORD not in d.stderr


def test_kill_9_leaves_the_retained_offline(tmp_path: Path, speed: Speed) -> None:
    broker = Broker(tmp_path)
    with broker, Recorder(broker, [(f"{BASE}/available", 1)]) as rec:
        with Daemon(tmp_path, _config(tmp_path, broker)) as d:
            rec.wait(lambda r: r.payload == b"online", speed.start_deadline(base_s=5.0),
                     "online")
            d.signal(signal.SIGKILL)
            d.proc.wait(speed.deadline())
        # the broker sends the last will once 1.5 x keepalive (5 s) pass without a packet
        rec.wait(lambda r: r.payload == b"offline", 7.5 + speed.deadline(), "the last will")
        with Recorder(broker, [(f"{BASE}/available", 1)]) as late:
            got = late.wait(lambda r: True, speed.deadline(), "the retained availability")
        assert (got.payload, got.retain) == (b"offline", True)


def _outage_config(tmp: Path, broker: Broker) -> Path:
    # updates whenever the bird changes zones (it crosses both halves every loop of the clip)
    return _config(tmp, broker, events={"update_interval_s": 0.5})


def test_a_broker_down_for_30_s_loses_no_event_and_sends_none_twice(
        tmp_path: Path, speed: Speed) -> None:
    broker = Broker(tmp_path, persistence=True)
    with broker, Recorder(broker, [(f"{BASE}/events", 1)], client_id="counter",
                          clean=False) as rec:
        with Daemon(tmp_path, _outage_config(tmp_path, broker)) as d, \
                Listener(f"ipc://{tmp_path}/edged.sock", ("event/", "process/")) as sub:
            rec.wait(lambda r: True, speed.start_deadline(base_s=5.0), "a first event")
            broker.stop()  # SIGTERM: mosquitto saves the sessions it holds
            _mqtt_state(sub, lambda s: not s.startswith("connected"), speed.deadline(),
                        "the status saying MQTT is down")
            during = len(_zmq_events(sub))
            sub.poll_for(30.0)
            assert len(_zmq_events(sub)) > during, "no event while the broker was down"
            broker.restart()
            _mqtt_state(sub, lambda s: s.startswith("connected"), 10 + speed.deadline(),
                        "reconnected")
            sub.poll_for(2.0)  # a few more events after the outage
            code, _ = d.stop()
            sub.drain()
        assert code == 0, d.stderr[-3000:]
        want = _each_once_in_order(rec, _zmq_events(sub), speed)
    assert len(want) >= 10, want


def test_edged_restarted_while_the_broker_is_down_loses_no_event(
        tmp_path: Path, speed: Speed) -> None:
    broker = Broker(tmp_path, persistence=True)
    cfg = _outage_config(tmp_path, broker)
    with broker, Recorder(broker, [(f"{BASE}/events", 1)], client_id="counter",
                          clean=False) as rec:
        zmq_events: list[dict[str, Any]] = []
        with Daemon(tmp_path, cfg) as d, \
                Listener(f"ipc://{tmp_path}/edged.sock", ("event/", "process/")) as sub:
            rec.wait(lambda r: True, speed.start_deadline(base_s=5.0), "a first event")
            broker.stop()
            _mqtt_state(sub, lambda s: not s.startswith("connected"), speed.deadline(),
                        "MQTT down")
            sub.poll_for(3.0)
            code, _ = d.stop()
            sub.drain()
            zmq_events += _zmq_events(sub)
        assert code == 0, d.stderr[-3000:]
        with sqlite3.connect(tmp_path / "events.db") as conn:
            waiting = conn.execute(f"SELECT count(*) FROM {OUTBOX}").fetchone()[0]
        assert waiting > 0  # kept on disk for the next run
        with Daemon(tmp_path, cfg) as d, \
                Listener(f"ipc://{tmp_path}/edged.sock", ("event/", "process/", "det/")) as sub:
            # the broker is still down: edged starts and detects anyway
            sub.wait_until(lambda m: m[0] == "det/roof/", speed.start_deadline(base_s=5.0),
                           "detections with the broker down")
            _mqtt_state(sub, lambda s: not s.startswith("connected"), speed.deadline(),
                        "MQTT down in the status")
            sub.wait_until(lambda m: m[0] == "event/roof/", speed.deadline(n_frames=25),
                           "an event of the second run")
            broker.restart()
            _mqtt_state(sub, lambda s: s.startswith("connected"), 10 + speed.deadline(),
                        "connected")
            code, _ = d.stop()
            sub.drain()
            zmq_events += _zmq_events(sub)
        assert code == 0, d.stderr[-3000:]
        _each_once_in_order(rec, zmq_events, speed)


def test_a_removed_camera_s_entities_are_removed_and_home_assistant_gets_them_again(
        tmp_path: Path, speed: Speed) -> None:
    broker = Broker(tmp_path)
    cam = {"source": str(SAMPLE_CLIP)}
    two = {"cameras": [{"name": "a", **cam}, {"name": "b", **cam}]}
    mqtt = {"discovery_labels": ["bird"]}
    gone = "homeassistant/image/edged_n1/b_bird_snapshot/config"
    kept = "homeassistant/image/edged_n1/a_bird_snapshot/config"
    with broker, Recorder(broker, [("homeassistant/#", 1)]) as rec:
        cfg = _config(tmp_path, broker, mqtt, **two)
        with Daemon(tmp_path, cfg) as d:
            rec.wait(lambda r: r.topic == gone and r.payload != b"",
                     speed.start_deadline(base_s=5.0), "camera b announced")
            _config(tmp_path, broker, mqtt, cameras=two["cameras"][:1])
            d.signal(signal.SIGHUP)
            rec.wait(lambda r: r.topic == gone and r.payload == b"", speed.deadline(),
                     "camera b's entity removed")
            n = len(rec.messages(kept))
            ha = broker.paho_client()  # Home Assistant starting: its birth message
            ha.connect(broker.host, broker.port)
            ha.loop_start()
            ha.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
            ha.disconnect()
            ha.loop_stop()
            rec.wait(lambda r: len(rec.messages(kept)) > n, speed.deadline(),
                     "announced again after Home Assistant's online")
            code, _ = d.stop()
        assert code == 0, d.stderr[-3000:]
        with Recorder(broker, [("homeassistant/#", 1)]) as late:
            late.wait(lambda r: r.topic == kept, speed.deadline(), "camera a's configs")
            assert not [r for r in late.messages() if "/edged_n1/b_" in r.topic]


def test_mqtt_config_errors_are_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", mqtt={"enabled": True,
                                                  "password_file": str(tmp_path / "nope")})
    proc = run_edged("check-config", str(cfg))
    assert proc.returncode == 2
    assert one_line_error(proc).endswith(f"mqtt.password_file: file {tmp_path}/nope not found")
    cfg = write_config(tmp_path / "c.yaml", mqtt={"qos": {"events": 3}})
    proc = run_edged("check-config", str(cfg))
    assert proc.returncode == 2
    assert "mqtt.qos.events: expected an integer in [0, 2], got 3" in one_line_error(proc)


def test_mqtt_on_without_paho_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A board image without paho-mqtt (the mqtt extra not installed)."""
    cfg = write_config(tmp_path / "c.yaml", mqtt={"enabled": True, "port": 1},
                       publish={"endpoints": [f"ipc://{tmp_path}/e.sock"]})
    hide = ("import sys; sys.modules['paho'] = None; from edged.cli import main; "
            f"raise SystemExit(main(['run', '--config', {str(cfg)!r}]))")
    proc = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "mqtt.enabled: needs paho-mqtt 2.x: pip install 'edged[mqtt]'" in \
        one_line_error(proc)


@contextlib.contextmanager
def _bridge(mqtt: dict[str, Any], history: Path | None = None,
            before: Callable[[MqttBridge], None] = lambda b: None) -> Iterator[MqttBridge]:
    """The real bridge (paho, real sockets) on ``mqtt``, running; ``before`` runs before its
    thread starts."""
    cfg = parse_config({"camera": {"name": "roof", "source": str(SAMPLE_CLIP)},
                        "mqtt": {"enabled": True, **mqtt}})
    bridge = MqttBridge(cfg.mqtt, camera_specs(cfg), history)
    bridge.prepare()
    before(bridge)
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()
        assert bridge.join(10), "the bridge did not stop"


def _bridge_says(tmp: Path, mqtt: dict[str, Any], want: str, timeout_s: float) -> str:
    """The bridge's state once it contains ``want``."""
    with _bridge(mqtt) as bridge:
        deadline = time.monotonic() + timeout_s
        while want not in bridge.state:
            assert time.monotonic() < deadline, f"{want!r} not in {bridge.state!r}"
            time.sleep(0.05)
        return bridge.state


def test_a_connection_that_fails_says_why(tmp_path: Path, speed: Speed) -> None:
    wait = speed.deadline(base_s=2.0)  # paho's first attempt, at most CONNECT_TIMEOUT_S
    with socket.socket() as closed:  # bound, never listening: the kernel refuses
        closed.bind(("127.0.0.1", 0))
        state = _bridge_says(tmp_path, {"host": "127.0.0.1", "port": closed.getsockname()[1]},
                             "connection refused", wait)
    assert state.startswith("cannot connect to 127.0.0.1:") and "mqtt.port" in state, state
    state = _bridge_says(tmp_path, {"host": "broker.invalid"}, "cannot resolve", wait)
    assert "check mqtt.host" in state, state
    (tmp_path / "other").mkdir()
    (tmp_path / "plain").mkdir()
    tls = Broker(tmp_path, tls=True)
    other = Broker(tmp_path / "other", tls=True)  # its CA signed nothing the broker has
    plain = Broker(tmp_path / "plain")
    assert tls.ca and other.ca
    at_tls = {"host": tls.host, "port": tls.port}
    with tls, plain:
        # a TLS port spoken to in plain text: mosquitto hangs up without a CONNACK
        state = _bridge_says(tmp_path, at_tls, "no MQTT answer", wait)
        assert "TLS" in state and state.startswith("cannot connect"), state
        state = _bridge_says(tmp_path, {**at_tls, "tls_ca_file": str(other.ca)}, "certificate",
                             wait)
        assert state.startswith("cannot connect") and "mqtt.tls_" in state, state
        state = _bridge_says(tmp_path, {"host": plain.host, "port": plain.port,
                                        "tls_ca_file": str(tls.ca)}, "TLS handshake", wait)
        assert state.startswith("cannot connect") and "mqtt.port" in state, state
        # and the right CA connects: the failures above were the settings, not the test
        assert _bridge_says(tmp_path, {**at_tls, "tls_ca_file": str(tls.ca)}, "connected",
                            wait) == f"connected to {tls.host}:{tls.port}"


def test_events_keep_reaching_mqtt_while_the_history_refuses_writes(
        tmp_path: Path, speed: Speed) -> None:
    """A history that refuses writes (locked by another process's transaction here; a full
    disk refuses them the same way) delays no event on MQTT: each one goes out live, after
    those the outbox still had, in order and once, the ends of a stop meanwhile too. (That the
    history gets them once it takes writes again: test_history's test of the store.)"""
    broker = Broker(tmp_path)
    db = tmp_path / "events.db"
    with broker, Recorder(broker, [(f"{BASE}/events", 1)]) as rec:
        lock = sqlite3.connect(db, isolation_level=None)
        try:
            with Daemon(tmp_path, _outage_config(tmp_path, broker)) as d, \
                    Listener(f"ipc://{tmp_path}/edged.sock", ("event/", "process/")) as sub:
                rec.wait(lambda r: True, speed.start_deadline(base_s=5.0), "a first event")
                lock.execute("BEGIN EXCLUSIVE")  # edged's writes: "locked" after a busy wait
                sub.wait_until(lambda m: m[0] == "process/" and m[1]["history"] != "ok",
                               speed.deadline(base_s=BUSY_TIMEOUT_S + 2),
                               "the status saying the history refuses writes")
                sub.wait_count(lambda m: m[0].startswith("event/"), 3, speed.deadline(
                    base_s=5.0), "events while it does", since=len(sub.messages))
                want = {_event_key(m) for m in _zmq_events(sub)}
                rec.wait(lambda r: {_event_key(m) for m in _mqtt_events(rec)} >= want,
                         speed.deadline(base_s=BUSY_TIMEOUT_S),
                         f"all {len(want)} event messages on MQTT, the history still locked")
                code, _ = d.stop()  # still locked: the store's last try hangs on the lock
                sub.drain()
        finally:
            lock.rollback()
            lock.close()
        assert code == 0, d.stderr[-3000:]
        ends = [m for m in _zmq_events(sub) if m["phase"] == "end"]
        assert any(m["end_reason"] == "shutdown" for m in ends), ends
        _each_once_in_order(rec, _zmq_events(sub), speed)


def test_a_live_event_goes_out_between_the_outbox_messages_around_it(
        tmp_path: Path, speed: Speed) -> None:
    """An event message the history refused goes to the bridge with the outbox seq it follows:
    "b" was published after "a" (seq 1) and before "c" (seq 2, recorded once the history took
    writes again, before the broker was back): the broker gets a, b, c."""
    db = tmp_path / "events.db"
    t0 = at(7)
    conn = open_history(db)
    with conn:
        record(conn, event("a", "start", t0, t0), outbox=True)
        record(conn, event("c", "start", t0 + NS, t0 + NS), outbox=True)
    conn.close()
    broker = Broker(tmp_path)
    with broker, Recorder(broker, [(f"{BASE}/events", 1)]) as rec, \
            _bridge({"host": broker.host, "port": broker.port, "node": NODE}, db,
                    lambda b: b.live(event("b", "start", t0, t0), after=1)):
        rec.wait(lambda r: len(_mqtt_events(rec)) >= 3, speed.deadline(), "three events")
    assert [m["id"] for m in _mqtt_events(rec)] == ["a", "b", "c"]


def test_a_reload_s_new_bridge_sends_what_the_old_one_had_still_to_send_live(
        tmp_path: Path, speed: Speed) -> None:
    """A reload that replaces the bridge (a password fixed, say) while the history refuses
    writes: the event messages the old bridge could not send yet go out through the new one,
    before those handed to it since."""
    t0 = at(7)
    with socket.socket() as closed:  # the old bridge's broker: nothing listens there
        closed.bind(("127.0.0.1", 0))
        cfg = parse_config({"camera": {"name": "roof", "source": str(SAMPLE_CLIP)},
                            "mqtt": {"enabled": True, "host": "127.0.0.1",
                                     "port": closed.getsockname()[1], "node": NODE}})
        old = MqttBridge(cfg.mqtt, camera_specs(cfg), None)
        old.prepare()
        old.start()
        old.live(event("a", "start", t0, t0))
        old.stop()
        assert old.join(10)
    broker = Broker(tmp_path)

    def switch(new: MqttBridge) -> None:
        new.live(event("b", "start", t0, t0))  # handed to the new one before the old stopped
        new.handover(old)

    with broker, Recorder(broker, [(f"{BASE}/events", 1)]) as rec, \
            _bridge({"host": broker.host, "port": broker.port, "node": NODE}, before=switch):
        rec.wait(lambda r: len(_mqtt_events(rec)) >= 2, speed.deadline(), "two events")
    assert [m["id"] for m in _mqtt_events(rec)] == ["a", "b"]
