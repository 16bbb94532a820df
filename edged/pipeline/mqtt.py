"""The MQTT bridge: events, occupancy, snapshots and status to a broker, and Home Assistant
discovery (``mqtt:`` in the config; paho-mqtt 2.x, imported only when it is on).

It never costs the inference path anything: the publisher thread hands it each message it sends
(`offer`: an append to a bounded queue), and everything else happens on this thread and on
paho's network thread. A broker that is down at start or goes away costs nothing but this
thread's wake-ups; paho reconnects with a backoff (1 s doubling up to 60 s).

What is kept while the broker is away:

- **Events** are delivered from the event history's outbox (``edged.api.history.OUTBOX``): the
  event store writes every event message there in the transaction that records it, and this
  thread publishes them in order, at most ``WINDOW`` unacknowledged, and remembers (in the same
  file) how far the broker acknowledged. A broker outage, a restart of edged, or both, lose
  none; a message handed to the broker whose acknowledgement was lost to a crash is sent again
  (MQTT QoS 1 is at least once; ``id`` + ``phase`` + ``ts_ns`` identify a message). While the
  history refuses writes (a full disk), the store hands each event message here instead, with
  the outbox seq it follows; it goes out live once the outbox's messages up to that seq have:
  events keep flowing, in order, best effort (a restart meanwhile loses those the broker had
  not acknowledged). Without an event history, events go out live, best effort.
- **Counts and snapshots** are retained topics: only the latest value matters, so the latest
  per topic is kept and (re)published on every connection (a broker restarted without
  persistence has lost its retained messages).
- **Status** is the latest message per topic, sent every ``status_interval_s`` and at once on a
  state change; never retained (a retained "running" would outlive a killed edged).
- **Detections** (off by default) are dropped while disconnected.

Topics, below ``base_topic`` (default ``edged/<node>``), Frigate-like:
``available`` (``online``/``offline``, retained, the last will), ``events``,
``<camera>/<label>`` and ``<camera>/zone/<zone>/<label>`` (counts, retained),
``<camera>/<label>/snapshot`` (JPEG, retained), ``status`` and ``<camera>/status``,
``<camera>/detections``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import re
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edged import __version__
from edged.api.history import delivered, mark_delivered, open_history, outbox_after
from edged.api.messages import (
    CountMessage,
    DetMessage,
    EventMessage,
    Message,
    Occupancy,
    ProcessStatus,
    SnapMessage,
    StatusMessage,
    encode,
)
from edged.config import Config, MqttConfig, watched_labels
from edged.errors import ConfigError, first_line
from edged.pipeline.stage import StageThread

logger = logging.getLogger(__name__)

WINDOW = 16  # event messages handed to the broker and not yet acknowledged
OFFERS = 512  # messages waiting for this thread (it keeps up; a bound, not a buffer)
LIVE_EVENTS = 1000  # event messages sent live (no history, or it fails), kept while disconnected
PAHO_QUEUE = 1000  # messages paho holds unacknowledged or unsent (a broker that never acks)
ANNOUNCE_EVERY_S = 10.0  # Home Assistant's "online" re-announces at most this often
CONNECT_TIMEOUT_S = 2.0  # a broker whose SYNs vanish must not hold a stop or a reload long
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60
CURSOR = "mqtt"  # the outbox consumer's name in history.DELIVERED
ONLINE, OFFLINE = "online", "offline"
_SLUG = re.compile(r"[^A-Za-z0-9_-]")


def slug(text: str) -> str:
    """An id Home Assistant accepts in discovery topics and unique ids."""
    return _SLUG.sub("_", text)


def segment(text: str) -> str:
    """A name as one topic level: no ``/``, ``+``, ``#`` (a label may contain anything)."""
    return re.sub(r"[/+#\0]", "_", text) or "_"


def node_name(cfg: MqttConfig) -> str:
    return cfg.node or (re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "edged")


def base_topic(cfg: MqttConfig) -> str:
    return cfg.base_topic or f"edged/{node_name(cfg)}"


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """What discovery announces for a camera: its entities per label."""

    name: str
    labels: tuple[str, ...]


def camera_specs(cfg: Config) -> tuple[CameraSpec, ...]:
    labels = cfg.mqtt.discovery_labels
    return tuple(CameraSpec(c.name, labels if labels is not None else watched_labels(cfg, c))
                 for c in cfg.cameras)


class Topics:
    """Every topic the bridge publishes on, from the base topic (one place)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.available = f"{base}/available"
        self.events = f"{base}/events"
        self.status = f"{base}/status"

    def count(self, camera: str, label: str, zone: str | None = None) -> str:
        where = f"{segment(camera)}/zone/{segment(zone)}" if zone else segment(camera)
        return f"{self.base}/{where}/{segment(label)}"

    def snapshot(self, camera: str, label: str) -> str:
        return f"{self.base}/{segment(camera)}/{segment(label)}/snapshot"

    def camera_status(self, camera: str) -> str:
        return f"{self.base}/{segment(camera)}/status"

    def detections(self, camera: str) -> str:
        return f"{self.base}/{segment(camera)}/detections"


def discovery(cfg: MqttConfig, cameras: Sequence[CameraSpec]) -> dict[str, dict[str, Any]]:
    """Home Assistant's discovery configs: topic -> payload, for one device (this node).

    Keys per platform as Home Assistant's MQTT docs require them (binary_sensor and sensor:
    ``state_topic``; image: ``image_topic`` or ``url_topic``); ``unique_id`` and ``device``
    group the entities under the node; ``availability`` marks them unavailable when edged is
    gone (the last will)."""
    node = node_name(cfg)
    topics = Topics(base_topic(cfg))
    node_id = f"edged_{slug(node)}"
    device = {"identifiers": [node_id], "name": f"edged {node}", "manufacturer": "edged",
              "model": "edged object detection", "sw_version": __version__}
    common = {"availability_topic": topics.available, "payload_available": ONLINE,
              "payload_not_available": OFFLINE, "device": device,
              "origin": {"name": "edged", "sw_version": __version__}}
    out: dict[str, dict[str, Any]] = {}

    def add(platform: str, object_id: str, **payload: Any) -> None:
        oid = slug(object_id)
        topic = f"{cfg.discovery_prefix}/{platform}/{node_id}/{oid}/config"
        out[topic] = {**payload, "unique_id": f"{node_id}_{oid}", **common}

    for cam in cameras:
        for label in cam.labels:
            count = topics.count(cam.name, label)
            add("binary_sensor", f"{cam.name}_{label}_occupancy",
                name=f"{cam.name} {label} occupancy", state_topic=count,
                value_template="{{ 'ON' if value | int > 0 else 'OFF' }}", payload_on="ON",
                payload_off="OFF", device_class="occupancy")
            add("sensor", f"{cam.name}_{label}_count", name=f"{cam.name} {label} count",
                state_topic=count, state_class="measurement", icon="mdi:counter")
            add("image", f"{cam.name}_{label}_snapshot", name=f"{cam.name} {label} snapshot",
                image_topic=topics.snapshot(cam.name, label), content_type="image/jpeg")
        add("sensor", f"{cam.name}_fps", name=f"{cam.name} fps",
            state_topic=topics.camera_status(cam.name), value_template="{{ value_json.fps_out }}",
            unit_of_measurement="fps", state_class="measurement", entity_category="diagnostic")
        add("sensor", f"{cam.name}_state", name=f"{cam.name} state",
            state_topic=topics.camera_status(cam.name), value_template="{{ value_json.state }}",
            entity_category="diagnostic")
    add("sensor", "backend", name="backend", state_topic=topics.status,
        value_template="{{ value_json.backend }}", entity_category="diagnostic")
    add("sensor", "fallback_reason", name="fallback reason", state_topic=topics.status,
        value_template="{{ value_json.fallback_reason or 'none' }}",
        entity_category="diagnostic")
    return out


def files_stamp(cfg: MqttConfig) -> tuple[tuple[str, int, int], ...]:
    """Identity of the password and TLS files on disk: a reload after one was replaced (a
    rotated password, a renewed certificate) reconnects with it."""
    out = []
    for path in (cfg.password_file, cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file):
        if path is not None:
            try:
                st = path.stat()
                out.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(path), 0, -1))
    return tuple(out)


def read_password(cfg: MqttConfig) -> str | None:
    if cfg.password_file is None:
        return None
    try:
        with open(cfg.password_file, encoding="utf-8") as f:
            return f.readline(4096).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"mqtt.password_file: cannot read {cfg.password_file}: "
                          f"{getattr(e, 'strerror', None) or first_line(e)}") from e


def uses_tls(cfg: MqttConfig) -> bool:
    return cfg.tls or cfg.tls_ca_file is not None or cfg.tls_cert_file is not None


def connect_error(e: BaseException | None, tls: bool) -> str:
    """Why a connection attempt failed, and what to check (``tls``: TLS is configured)."""
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror}; check mqtt.host)"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is the broker running, on mqtt.port?)"
    if isinstance(e, TimeoutError):
        return (f"no answer within {CONNECT_TIMEOUT_S:g} s (check mqtt.host, the network, a "
                "firewall)")
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate: {e.verify_message} (check mqtt.tls_ca_file)"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or first_line(e)} (check mqtt.tls_*)"
    if tls and isinstance(e, ConnectionResetError | ssl.SSLEOFError):
        return "the broker hung up during the TLS handshake (is mqtt.port its TLS port?)"
    if isinstance(e, OSError):
        return e.strerror or first_line(e)
    return "no reason given"


def check_available() -> None:
    """ConfigError unless paho-mqtt 2.x is installed (the ``mqtt`` extra)."""
    try:
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: F401  (2.x has it)
    except ImportError as e:
        raise ConfigError("mqtt.enabled: needs paho-mqtt 2.x: pip install 'edged[mqtt]' (or "
                          "python3-paho-mqtt from the board image), or set mqtt.enabled: "
                          "false") from e


class MqttBridge(StageThread):
    """See the module doc. ``history``: the event history (events come from its outbox; None:
    events go out live). Constructing it reads the password file (ConfigError)."""

    def __init__(self, cfg: MqttConfig, cameras: Sequence[CameraSpec],
                 history: Path | None) -> None:
        super().__init__("edged-mqtt", daemon=True)
        check_available()
        self.cfg = cfg
        self.topics = Topics(base_topic(cfg))
        self.history = history
        self.files = files_stamp(cfg)  # before reading them: a change meanwhile reloads again
        self._password = read_password(cfg)
        self._cameras = tuple(cameras)
        self._cond = threading.Condition()
        self._offers: collections.deque[Message] = collections.deque(maxlen=OFFERS)
        self._acks: collections.deque[int] = collections.deque()  # paho's thread appends
        # (topic, the payload is "online" / not empty): never the payload itself
        self._inbox: collections.deque[tuple[str, bool]] = collections.deque(maxlen=1024)
        self._online_mono = -ANNOUNCE_EVERY_S  # Home Assistant's last "online" we answered
        self._resending = False  # after a reconnect: paho resends the older events first
        self._connected = False
        self._session = 0  # +1 per connection (paho's thread); this thread republishes on it
        self._state = f"connecting to {cfg.host}:{cfg.port}"
        self._announce = False
        self._retained: dict[str, tuple[bytes, int]] = {}  # topic -> payload, qos
        self._dirty: set[str] = set()
        self._status: dict[str, tuple[bytes, str]] = {}  # topic -> payload, state
        self._status_sent: dict[str, str] = {}  # topic -> state last sent
        self._status_due = 0.0
        self._det_last: dict[str, float] = {}
        # (the outbox seq it follows, payload)
        self._live: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=LIVE_EVENTS)
        # paho's receipts of the live ones it took (sent and acknowledged: a stop waits for them)
        self._live_sent: collections.deque[Any] = collections.deque(maxlen=PAHO_QUEUE)
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._handed = 0  # last outbox seq handed to paho
        self._acked = 0  # last outbox seq the broker has (everything up to it)
        self._conn: sqlite3.Connection | None = None
        self._db_error: str | None = None
        self.delivered = 0  # event messages acknowledged by the broker
        self.dropped = 0  # offers dropped (this thread behind), detections while away
        self._client: Any = None
        self._announced: set[str] = set()  # discovery topics of ours with a config now
        self._forget = False

    # --- any thread -------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """For the status: connected, or what it is trying and why."""
        waiting, live = len(self._inflight), len(self._live)
        counts = ", ".join(x for x in (f"{waiting} events unacknowledged" if waiting else "",
                                       f"{live} to send live" if live else "") if x)
        extra = f"; {self._db_error}" if self._db_error else ""
        return self._state + (f" ({counts})" if counts else "") + extra

    def offer(self, message: Message) -> None:
        """A message the publisher just sent (its thread): queued, never blocks."""
        if isinstance(message, DetMessage) and not self.cfg.detections:
            return  # the frame-rate stream would crowd out counts in the queue
        with self._cond:
            if len(self._offers) == self._offers.maxlen:
                self.dropped += 1
            self._offers.append(message)
            self._cond.notify()

    def live(self, message: EventMessage, after: int = 0) -> None:
        """An event message the history does not have (the store's thread): sent live, after
        the outbox's messages up to seq ``after`` (which came before it); never blocks."""
        payload = encode(message)
        with self._cond:
            if len(self._live) == self._live.maxlen:
                self.dropped += 1
            self._live.append((after, payload))
            self._cond.notify()

    def wake(self) -> None:
        """The event store committed (its thread): there may be events to deliver."""
        with self._cond:
            self._cond.notify()

    def update_cameras(self, cameras: Sequence[CameraSpec]) -> None:
        """A reload changed the cameras or their labels: announce again (removed entities are
        cleared when their retained configs come back to us)."""
        with self._cond:
            self._cameras = tuple(cameras)
            self._announce = True
            self._forget = True  # this thread drops what removed cameras left
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stop.set()
            self._cond.notify()

    # --- paho's network thread --------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._set_state(f"refused by {self.cfg.host}:{self.cfg.port}: {reason} (check "
                            "mqtt.username, mqtt.password_file, mqtt.tls_*); retrying")
            return
        if self.cfg.discovery:
            client.subscribe([(f"{self.cfg.discovery_prefix}/status", 1),
                              (f"{self.cfg.discovery_prefix}/+/{self._node_id}/+/config", 1)])
        with self._cond:
            self._connected = True
            self._session += 1
            self._cond.notify()
        self._set_state(f"connected to {self.cfg.host}:{self.cfg.port}")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        with self._cond:
            was, self._connected = self._connected, False
        if self._stop.is_set() or self._state.startswith("refused"):
            return  # (after a refusal paho disconnects too: the refusal is what to fix)
        where = f"{self.cfg.host}:{self.cfg.port}"
        if was:
            self._set_state(f"disconnected from {where}: {reason}; reconnecting")
        else:  # something took the TCP connection but answered no MQTT CONNACK
            self._set_state(f"cannot connect to {where}: no MQTT answer ({reason}; is it a "
                            "broker's port, and does it want TLS? mqtt.port, mqtt.tls_*); "
                            "retrying")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho passes no error: it calls this while it handles the attempt's OSError
        self._set_state(f"cannot connect to {self.cfg.host}:{self.cfg.port}: "
                        f"{connect_error(sys.exc_info()[1], uses_tls(self.cfg))}; retrying")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        # Called with paho's own lock held: never take a lock this thread holds while it
        # publishes (this thread holds none then; _cond is only held to wait and to swap).
        self._acks.append(mid)
        with self._cond:
            self._cond.notify()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            payload = msg.payload
            flag = payload.strip() == ONLINE.encode() if msg.topic.endswith("/status") \
                else bool(payload)
            self._inbox.append((msg.topic, flag))
            self._cond.notify()

    def _set_state(self, state: str) -> None:
        if state != self._state:
            log = logger.info if state.startswith("connected") else logger.warning
            log("mqtt: %s", state)
            self._state = state

    # --- this thread ------------------------------------------------------------------------
    @property
    def _node_id(self) -> str:
        return f"edged_{slug(node_name(self.cfg))}"

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        cfg = self.cfg
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=cfg.client_id or f"edged-{node_name(cfg)}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        paho_log = logging.getLogger("edged.mqtt.paho")
        paho_log.setLevel(logging.WARNING)
        if not paho_log.filters:  # its reconnect loop says so at every attempt: the status does
            paho_log.addFilter(lambda r: not r.getMessage().startswith("Client is not connected"))
        client.enable_logger(paho_log)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, self._password)
        if uses_tls(cfg):
            try:
                client.tls_set(ca_certs=str(cfg.tls_ca_file) if cfg.tls_ca_file else None,
                               certfile=str(cfg.tls_cert_file) if cfg.tls_cert_file else None,
                               keyfile=str(cfg.tls_key_file) if cfg.tls_key_file else None,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise ConfigError(f"mqtt.tls_*: {first_line(e)}") from e
        client.will_set(self.topics.available, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_inflight_messages_set(WINDOW * 2)
        client.max_queued_messages_set(PAHO_QUEUE)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def prepare(self) -> None:
        """Build the client (ConfigError for unusable TLS files) before the thread starts."""
        self._client = self._make_client()

    def _open_outbox(self) -> None:
        if self.history is None or self._conn is not None:
            return
        try:
            self._conn = open_history(self.history)
            self._acked = self._handed = delivered(self._conn, CURSOR)
            self._db_error = None
        except Exception as e:
            self._db_error = f"event outbox: {first_line(e)}"

    def _run(self) -> None:
        if self._client is None:
            self.prepare()
        client = self._client
        client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        client.loop_start()
        session = 0
        try:
            self._open_outbox()
            while True:
                with self._cond:
                    if not self._stop.is_set() and not self._work():
                        self._cond.wait(self._wait_s())
                    offers = list(self._offers)
                    self._offers.clear()
                    inbox = list(self._inbox)
                    self._inbox.clear()
                    connected, now_session = self._connected, self._session
                    announce, self._announce = self._announce, False
                    forget, self._forget = self._forget, False
                    cameras = self._cameras
                if forget:
                    self._forget_removed(cameras)
                for m in offers:
                    self._take(m)
                if self.history is not None and self._conn is None:
                    self._open_outbox()
                if connected:
                    if now_session != session:  # a new connection: everything again
                        session = now_session
                        announce = True
                        self._on_new_session(client)
                    self._answer(client, inbox, cameras)
                    if announce and self.cfg.discovery:
                        self._announce_to(client, cameras)
                    self._flush(client)
                self._settle_acks()
                if self._stop.is_set():
                    break
            self._finish(client)
        except Exception as e:  # a bug: said, and shown in the status (never "connected")
            logger.exception("mqtt: the bridge failed")
            self._state = f"failed: {first_line(e)} (see the log; restart edged)"
        finally:
            client.loop_stop()
            if self._conn is not None:
                self._conn.close()

    def _forget_removed(self, cameras: Sequence[CameraSpec]) -> None:
        """A reload removed cameras: their counts, snapshots and statuses are no longer
        published again on every connection."""
        keep = {f"{self.topics.base}/{segment(c.name)}/" for c in cameras}
        mine = f"{self.topics.base}/"
        for table in (self._retained, self._status):
            for topic in list(table):
                if topic.startswith(mine) and topic.count("/") > mine.count("/") and \
                        not any(topic.startswith(k) for k in keep):
                    del table[topic]
        self._dirty &= set(self._retained)

    def handover(self, old: MqttBridge) -> None:
        """Start from what ``old`` (the bridge a reload replaces, stopped) knew: the counts and
        the snapshots, which otherwise reach the broker only when they next change, and the
        event messages it had still to send live (before any handed to this one since)."""
        if old.topics.base == self.topics.base:
            self._retained = dict(old._retained)
        with old._cond, self._cond:
            self._live.extendleft(reversed(old._live))
            old._live.clear()

    def _work(self) -> bool:
        return bool(self._offers or self._acks or self._inbox or self._announce)

    def _wait_s(self) -> float:
        if self._status_due and self._connected:
            return max(0.0, min(1.0, self._status_due - time.monotonic()))
        return 1.0  # also: events the store committed while nobody woke us

    def _on_new_session(self, client: Any) -> None:
        client.publish(self.topics.available, ONLINE, qos=1, retain=True)
        self._dirty = set(self._retained)
        # paho resends the events in flight once it is connected: newer ones wait for them
        self._resending = bool(self._inflight)
        self._status_due = time.monotonic()
        self._status_sent.clear()
        # handed messages are paho's to resend (QoS > 0); QoS 0 ones it may have lost
        if self.cfg.qos.events == 0 and self._inflight:
            self._inflight.clear()
            self._handed = self._acked

    def _take(self, m: Message) -> None:
        """A message from the publisher: remembered or queued as its kind needs."""
        t, q = self.topics, self.cfg.qos
        if isinstance(m, CountMessage):
            self._counts(m.camera, m.occupancy)
        elif isinstance(m, SnapMessage):
            self._retain(t.snapshot(m.camera, m.label), m.jpeg, q.snapshots)
        elif isinstance(m, StatusMessage | ProcessStatus):
            topic = t.camera_status(m.camera) if isinstance(m, StatusMessage) else t.status
            if isinstance(m, StatusMessage) and m.occupancy is not None:
                # a camera's status repeats its counts: a bridge started by a reload (or one
                # that lost a count) has them within a status interval
                self._counts(m.camera, m.occupancy)
            payload = encode(m)
            self._status[topic] = (payload, m.state)
            if self._status_sent.get(topic) != m.state:
                self._status_due = time.monotonic()  # a state change goes out at once
        elif isinstance(m, DetMessage):
            if self.cfg.detections:
                self._detections(m)
        elif isinstance(m, EventMessage) and self.history is None:
            self.live(m)

    def _counts(self, camera: str, occ: Occupancy) -> None:
        t, qos = self.topics, self.cfg.qos.counts
        values = {t.count(camera, lb): n for lb, n in occ.objects.items()}
        for zone, counts in occ.zones.items():
            values.update({t.count(camera, lb, zone): n for lb, n in counts.items()})
        for topic, n in values.items():
            self._retain(topic, str(n).encode(), qos)

    def _retain(self, topic: str, payload: bytes, qos: int) -> None:
        if self._retained.get(topic, (None, 0))[0] != payload:
            self._retained[topic] = (payload, qos)
            self._dirty.add(topic)

    def _detections(self, m: DetMessage) -> None:
        now = time.monotonic()
        if now - self._det_last.get(m.camera, -1e9) < 1.0 / self.cfg.detections_max_hz:
            return
        if not self._connected:
            self.dropped += 1
            return
        self._det_last[m.camera] = now
        self._client.publish(self.topics.detections(m.camera), encode(m),
                             qos=self.cfg.qos.detections)

    def _answer(self, client: Any, inbox: list[tuple[str, bool]],
                cameras: Sequence[CameraSpec]) -> None:
        """Home Assistant came online: announce again (at most every ANNOUNCE_EVERY_S: anyone
        may publish there). A retained discovery config of ours that we no longer announce (a
        camera removed, a label no longer watched): cleared."""
        if not self.cfg.discovery:
            return
        wanted = discovery(self.cfg, cameras)
        for topic, flag in inbox:
            if topic == f"{self.cfg.discovery_prefix}/status":
                if flag and time.monotonic() - self._online_mono >= ANNOUNCE_EVERY_S:
                    self._online_mono = time.monotonic()
                    logger.info("mqtt: Home Assistant is online: announcing again")
                    with self._cond:
                        self._announce = True
                    self._status_due = time.monotonic()
                    self._status_sent.clear()
            elif flag and topic not in wanted:
                client.publish(topic, b"", qos=1, retain=True)
                logger.debug("mqtt: removed the Home Assistant entity %s", topic)

    def _announce_to(self, client: Any, cameras: Sequence[CameraSpec]) -> None:
        """Every entity's config, retained; the ones announced before and not now (a reload
        removed a camera or a label) are cleared (an empty retained config)."""
        configs = discovery(self.cfg, cameras)
        for topic in sorted(self._announced - set(configs)):
            client.publish(topic, b"", qos=1, retain=True)
            logger.info("mqtt: removed the Home Assistant entity %s", topic)
        for topic, payload in configs.items():
            client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1,
                           retain=True)
        self._announced = set(configs)
        logger.info("mqtt: announced %d Home Assistant entities", len(configs))

    def _flush(self, client: Any) -> None:
        """Publish what is due: changed retained values, statuses, events."""
        for topic in sorted(self._dirty):
            payload, qos = self._retained[topic]
            if client.publish(topic, payload, qos=qos, retain=True).rc == 0:
                self._dirty.discard(topic)  # (else paho's queue is full: tried again later)
        now = time.monotonic()
        if self._status_due and now >= self._status_due:
            for topic, (payload, state) in self._status.items():
                client.publish(topic, payload, qos=self.cfg.qos.status)
                self._status_sent[topic] = state
            self._status_due = now + self.cfg.status_interval_s
        self._deliver(client)

    def _deliver(self, client: Any) -> None:
        """Event messages in the order they were published: the outbox's, while fewer than
        WINDOW are unacknowledged, and each live one once the outbox's messages before it have
        gone (all of them, when the outbox cannot be read)."""
        if self._resending and self._inflight:
            return  # paho sends the older ones again first: order is kept
        self._resending = False
        while True:
            item = self._live[0] if self._live else None
            bound = item[0] if item else None
            if self._conn is not None and (bound is None or self._handed < bound):
                room = WINDOW - len(self._inflight)
                if room <= 0:
                    return
                try:
                    rows = outbox_after(self._conn, self._handed, room, bound)
                except sqlite3.Error as e:
                    self._db_error = f"event outbox: {first_line(e)}"
                    rows = []
                for seq, _camera, payload in rows:
                    info = client.publish(self.topics.events, payload, qos=self.cfg.qos.events)
                    if info.rc != 0:  # paho's queue is full (a broker that stopped acking)
                        return
                    self._inflight[info.mid] = seq
                    self._handed = seq
                if bound is None or len(rows) == room:
                    return  # (a full window: more of the outbox may come before the live one)
            if item is None:
                return
            info = client.publish(self.topics.events, item[1], qos=self.cfg.qos.events)
            if info.rc != 0:
                return  # paho's queue is full: tried again later
            while self._live_sent and self._live_sent[0].is_published():
                self._live_sent.popleft()
            self._live_sent.append(info)
            with self._cond:  # the store's thread appends (a full deque drops from the left)
                if self._live and self._live[0] is item:
                    self._live.popleft()

    def _settle_acks(self) -> None:
        """Acknowledged event messages: everything below the oldest unacknowledged one is
        the broker's; remembered in the history."""
        done = False
        while self._acks:
            if self._inflight.pop(self._acks.popleft(), None) is not None:
                self.delivered += 1
                done = True
        if not done or self._conn is None:
            return
        upto = min(self._inflight.values()) - 1 if self._inflight else self._handed
        if upto > self._acked:
            try:
                mark_delivered(self._conn, CURSOR, upto)
                self._acked = upto
                self._db_error = None
            except sqlite3.Error as e:  # tried again at the next acknowledgement
                self._db_error = f"event outbox: {first_line(e)}"

    def _finish(self, client: Any) -> None:
        """Stopping: what is due goes out, then ``offline`` (a clean disconnect sends no last
        will). ``offline`` goes at QoS 0: paho sends that at once, never behind a full window
        of unacknowledged messages (which would leave ``online`` retained for ever); the TCP
        stream puts it before the DISCONNECT. Unacknowledged events get a short wait; the rest
        stay in the outbox for the next start."""
        with contextlib.suppress(Exception):
            if self._connected:
                self._flush(client)
                info = client.publish(self.topics.available, OFFLINE, qos=0, retain=True)
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline and (
                        self._inflight or not info.is_published() or
                        not all(i.is_published() for i in self._live_sent)):
                    with self._cond:
                        self._cond.wait(0.05)
                    self._settle_acks()
            client.disconnect()

