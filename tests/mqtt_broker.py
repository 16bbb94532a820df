"""A real mosquitto on loopback (Debian's package) and a paho subscriber that records all it gets:
the MQTT bridge is tested against the broker it meets in the field, not against a mock."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.daemon_util import die_with_parent, free_port

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
START_S = 10.0

_CA_EXT = ("basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign",
           "subjectKeyIdentifier=hash")


def _run(*args: str, cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")


def _read(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _signed(tmp: Path, name: str, cn: str, ext: list[str]) -> tuple[Path, Path]:
    """A P-256 key and a cert for it signed by tmp/ca.*; explicit extensions (SKI/AKI, key usage)
    so that strict X.509 verification (Python >= 3.13's default) accepts them too."""
    ext_file = tmp / f"{name}.ext"
    ext_file.write_text("\n".join([*ext, "basicConstraints=CA:FALSE", "subjectKeyIdentifier=hash",
                                   "authorityKeyIdentifier=keyid,issuer",
                                   "keyUsage=critical,digitalSignature,keyEncipherment"]) + "\n")
    _run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=tmp)
    _run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", ext_file.name, "-out", f"{name}.crt",
         cwd=tmp)
    return tmp / f"{name}.crt", tmp / f"{name}.key"


class Broker:
    """mosquitto in a subprocess on a free loopback port, optionally with a password file, TLS
    (a throwaway CA, server and client certificates) and persistence (sessions kept across a
    restart). ``user root`` in the config: as root, mosquitto would otherwise switch to the
    ``mosquitto`` user, which cannot read the test's 0700 tmp dir (ignored when not root)."""

    host = "127.0.0.1"

    def __init__(self, tmp: Path, *, users: dict[str, str] | None = None, tls: bool = False,
                 persistence: bool = False, require_certificate: bool = False) -> None:
        self.tmp, self.users, self.tls = tmp, dict(users or {}), tls
        self.require_certificate = require_certificate
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.log_path, self.out_path = tmp / "mosquitto.log", tmp / "mosquitto.out"
        self.ca: Path | None = None
        self.client_cert: Path | None = None
        self.client_key: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        lines = ["user root", f"log_dest file {self.log_path}", "log_type all",
                 "log_timestamp_format %H:%M:%S", f"listener {self.port} {self.host}"]
        if users:
            pw = tmp / "mosquitto.passwd"
            for i, (user, password) in enumerate(users.items()):
                _run(MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(pw), user, password,
                     cwd=tmp)
            pw.chmod(0o600)  # owned by the user running mosquitto, not readable by others
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        if tls:
            _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                 "-days", "2", "-subj", "/CN=edged test CA",
                 *[a for e in _CA_EXT for a in ("-addext", e)], cwd=tmp)
            self.ca = tmp / "ca.crt"
            cert, key = _signed(tmp, "server", "localhost",
                                ["subjectAltName=IP:127.0.0.1,DNS:localhost",
                                 "extendedKeyUsage=serverAuth"])
            self.client_cert, self.client_key = _signed(tmp, "client", "edged-client",
                                                        ["extendedKeyUsage=clientAuth"])
            lines += [f"cafile {self.ca}", f"certfile {cert}", f"keyfile {key}",
                      f"require_certificate {str(require_certificate).lower()}",
                      "use_identity_as_username false"]
        if persistence:
            (tmp / "mqdata").mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {tmp / 'mqdata'}/",
                      "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n")

    def log(self, since: tuple[int, int] = (0, 0)) -> str:
        """mosquitto's log (of all starts) and what it printed before its log was open (from
        byte offsets ``since`` in the two files on: start() shows only its own attempt)."""
        log, out = _read(self.log_path, since[0]), _read(self.out_path, since[1])
        return log + (f"\n--- stdout/stderr ---\n{out}" if out.strip() else "")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Launch and wait until the port accepts connections; a restart on the same port may
        find it still bound for a moment, so an exit on "Address already in use" is retried."""
        deadline = time.monotonic() + START_S
        while True:
            marks = _size(self.log_path), _size(self.out_path)
            with self.out_path.open("ab") as out:
                self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             preexec_fn=die_with_parent)
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection((self.host, self.port), timeout=0.5).close()
                    return
                except OSError:
                    time.sleep(0.02)
            try:
                code = self.proc.wait(0.5)  # just started at the deadline: give it time to fail
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"mosquitto not listening on {self.port} in {START_S} s:\n"
                                   f"{self.log(marks)[-3000:]}") from None
            if "Address already in use" not in _read(self.log_path, marks[0]) \
                    or time.monotonic() >= deadline:
                raise RuntimeError(f"mosquitto exited ({code}):\n{self.log(marks)[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal and wait; SIGTERM lets mosquitto save its persistent sessions."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same port (clients configured with it reconnect)."""
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def paho_client(self, client_id: str = "", user: str | None = None, clean: bool = True, *,
                    password: str | None = None, cert: bool | None = None) -> mqtt.Client:
        """A paho client set up for this broker, not connected. ``user``'s password comes from
        ``users`` unless given; ``cert`` (default: when the broker requires one) presents the
        client certificate."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean, protocol=mqtt.MQTTv311)
        if user is not None:
            client.username_pw_set(user, self.users.get(user, "") if password is None
                                   else password)
        if self.ca is not None:
            with_cert = self.require_certificate if cert is None else cert
            client.tls_set(ca_certs=str(self.ca),
                           certfile=str(self.client_cert) if with_cert else None,
                           keyfile=str(self.client_key) if with_cert else None)
        return client


class Received(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    t: float  # time.monotonic() at arrival


class Recorder:
    """A paho subscriber that records every message. It subscribes in on_connect, so it
    resubscribes after reconnecting (fast: 0.1-0.5 s) to a restarted broker; with ``clean=False``
    and a ``client_id`` the broker keeps its session (and QoS >= 1 messages) meanwhile.

    ``retain`` as a subscriber sees it is True only for messages the broker delivers from its
    retained store when the subscription is made, never for live ones even if published with
    retain: to check that a topic is retained, subscribe a *new* Recorder after the publish.

    A QoS >= 1 message the broker sends again with DUP set (same packet id, topic and payload
    as one recorded: its PUBACK was lost, e.g. the broker was stopped before reading it) is
    kept in ``redelivered``, not in ``messages()``: at-least-once between broker and
    subscriber must not look like the publisher sending twice."""

    def __init__(self, broker: Broker, topics: list[tuple[str, int]], *,
                 user: str | None = None, client_id: str = "", clean: bool = True) -> None:
        self.broker, self.topics = broker, topics
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self.redelivered: list[Received] = []
        self._ids: set[tuple[int, str, bytes]] = set()  # (mid, topic, payload) of QoS >= 1
        self._subscribed = False
        self.refused: str | None = None  # the reason of the last refused connect
        self.client = broker.paho_client(client_id, user, clean)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # annotated int, but paho only adds and compares them: fractions of a second work
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        try:
            self.wait_connected(START_S)
        except BaseException:
            self.close()
            raise

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    rc: ReasonCode, props: Properties | None) -> None:
        if rc.is_failure:
            with self._cond:
                self.refused = str(rc)
                self._cond.notify_all()
        else:
            if not flags.session_present:
                with self._cond:
                    self._ids.clear()  # a new session: packet ids start again
            client.subscribe(self.topics)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      rcs: list[ReasonCode], props: Properties | None) -> None:
        with self._cond:
            self._subscribed, self.refused = True, None
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       rc: ReasonCode, props: Properties | None) -> None:
        with self._cond:
            self._subscribed = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        r = Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic())
        key = (msg.mid, r.topic, r.payload)
        with self._cond:
            if msg.qos and msg.dup and key in self._ids:
                self.redelivered.append(r)
                return
            if msg.qos:
                self._ids.add(key)
            self._messages.append(r)
            self._cond.notify_all()

    def messages(self, prefix: str = "") -> list[Received]:
        """A copy of what arrived so far, on topics starting with ``prefix``."""
        with self._cond:
            return [r for r in self._messages if r.topic.startswith(prefix)]

    def wait(self, pred: Callable[[Received], bool], timeout_s: float, what: str) -> Received:
        """The first message so far or to come for which ``pred`` holds. ``pred`` runs outside
        the lock, so it may call ``messages()``."""
        deadline, seen = time.monotonic() + timeout_s, 0
        while True:
            with self._cond:
                while len(self._messages) == seen:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        topics = [r.topic for r in self._messages[-20:]]
                        raise AssertionError(f"no {what} in {timeout_s:.1f} s; "
                                             f"{len(self._messages)} messages, last: {topics}")
                    self._cond.wait(left)
                new = self._messages[seen:]
            for r in new:
                if pred(r):
                    return r
            seen += len(new)

    def wait_connected(self, timeout_s: float) -> None:
        """Until connected and subscribed (again, after a broker restart); a refused login
        fails at once."""
        with self._cond:
            self._cond.wait_for(lambda: self._subscribed or self.refused is not None, timeout_s)
            if not self._subscribed:
                why = f"refused: {self.refused}" if self.refused else f"not in {timeout_s} s"
                raise AssertionError(f"not subscribed to {self.broker.host}:{self.broker.port} "
                                     f"({why}); broker log:\n"
                                     f"{self.broker.log()[-3000:]}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
