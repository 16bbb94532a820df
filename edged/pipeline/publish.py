"""The publisher: the one thread that owns the ZeroMQ PUB socket.

Detection messages arrive through a small bounded queue (oldest dropped and counted when full);
status messages are sent every ``status_interval_s`` and at once on every state change. PUB never
blocks: at SNDHWM ZeroMQ drops messages for the slow subscriber only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from edged.api.messages import DetMessage, Message, SnapMessage, encode
from edged.config import CurveConfig, PublishConfig
from edged.errors import ConfigError, EdgedError, first_line
from edged.pipeline.stage import StageThread

logger = logging.getLogger(__name__)

QUEUE_SIZE = 16
# What a subscriber may send us: subscriptions (a topic such as "det/balcony") and handshake
# frames. Anything larger is refused by ZeroMQ's decoder before it allocates, and the peer is
# disconnected; without a cap one 10 MB SUBSCRIBE cost ~1 GB of memory for good.
# Not bounded by ZeroMQ: the number of distinct subscriptions a peer keeps (libzmq stores each
# in a trie until the peer disconnects; XPUB_MANUAL stores them too). Endpoints reachable by
# strangers need CURVE with authorized_keys_dir: unknown peers are refused before they can
# subscribe (README, "Encryption and access control").
MAX_INBOUND_BYTES = 4096
ZAP_DOMAIN = b"edged"
MAX_CLIENT_KEYS = 10_000
MAX_KEY_FILE_BYTES = 64 * 1024
LOOPBACK_HOSTS = ("localhost", "[::1]", "ip6-localhost")


class PublishError(ConfigError):
    """An endpoint cannot be bound (busy port, ipc path held by another process, ...)."""


def _server_key(curve: CurveConfig, section: str = "publish") -> tuple[bytes, bytes]:
    try:
        st = os.stat(curve.server_secret_key)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_FILE_BYTES:
            raise PublishError(f"{section}.curve.server_secret_key: {curve.server_secret_key} is "
                               f"not a key file (a regular file of at most "
                               f"{MAX_KEY_FILE_BYTES} bytes)")
        public, secret = zmq.auth.load_certificate(str(curve.server_secret_key))
    except (OSError, ValueError) as e:
        raise PublishError(f"{section}.curve.server_secret_key: cannot load "
                           f"{curve.server_secret_key}: {e}") from e
    if secret is None:
        raise PublishError(f"{section}.curve.server_secret_key: {curve.server_secret_key} "
                           "holds no secret key (use the .key_secret file)")
    return public, secret


def _client_keys(curve: CurveConfig, section: str = "publish") -> frozenset[bytes] | None:
    """The public keys in authorized_keys_dir (None: any client may connect)."""
    if curve.authorized_keys_dir is None:
        return None
    where = f"{section}.curve.authorized_keys_dir: {curve.authorized_keys_dir}"
    try:
        # pyzmq opens every *.key file there: each must be a small regular file (a FIFO
        # would block the reload for ever, /dev/zero never end)
        names = [e for e in os.scandir(curve.authorized_keys_dir) if e.name.endswith(".key")]
        if len(names) > MAX_CLIENT_KEYS:
            raise PublishError(f"{where}: more than {MAX_CLIENT_KEYS} keys")
        for e in names:
            st = os.stat(e.path)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_FILE_BYTES:
                raise PublishError(f"{where}: {e.name} is not a key file (a regular file "
                                   f"of at most {MAX_KEY_FILE_BYTES} bytes)")
        return frozenset(zmq.auth.load_certificates(str(curve.authorized_keys_dir)))
    except (OSError, ValueError) as e:
        raise PublishError(f"{section}.curve.authorized_keys_dir: cannot load the client keys "
                           f"in {curve.authorized_keys_dir}: {e}") from e


def _tcp_port(ep: str) -> int | None:
    if not ep.startswith("tcp://"):
        return None
    tail = ep.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def exposed(ep: str) -> bool:
    """Can other machines reach this endpoint (a tcp one not bound to loopback)?"""
    host = ep[6:].rsplit(":", 1)[0] if ep.startswith("tcp://") else "localhost"
    return host not in LOOPBACK_HOSTS and not host.startswith("127.")


def bind_endpoint(sock: zmq.Socket[bytes], ep: str, where: str, ipc_mode: int) -> None:
    """Bind ``ep`` (an ipc path: never stolen from a live process, given ``ipc_mode``);
    PublishError naming ``where`` if it cannot be."""
    if ep.startswith("ipc://"):
        _check_ipc_path(ep[6:], where)
    try:
        sock.bind(ep)
    except zmq.ZMQError as e:
        hint = " (another process is using the port)" if e.errno == errno.EADDRINUSE else ""
        raise PublishError(f"{where}: cannot bind {ep}: {e.strerror}{hint}") from e
    if ep.startswith("ipc://"):
        os.chmod(ep[6:], ipc_mode)


def start_authenticator(ctx: zmq.Context[zmq.Socket[bytes]]) -> ThreadAuthenticator:
    """The ZAP handler thread of ``ctx`` (PublishError if it cannot start)."""
    auth = ThreadAuthenticator(ctx)
    try:
        auth.start()
    except (RuntimeError, OSError, zmq.ZMQError) as e:
        # Its sockets must not keep the context from terminating (a hang at exit).
        for sock in (getattr(auth, "zap_socket", None), getattr(auth, "pipe", None),
                     getattr(getattr(auth, "thread", None), "pipe", None)):
            if sock is not None:
                sock.close(linger=0)
        raise PublishError(f"cannot start the ZeroMQ authentication thread ({first_line(e)}); "
                           "is the system call filter too strict?") from e
    return auth


def serve_curve(sock: zmq.Socket[bytes], auth: ThreadAuthenticator, curve: CurveConfig,
                section: str) -> tuple[tuple[bytes, bytes], frozenset[bytes] | None]:
    """Make ``sock`` a CURVE server with ``curve``'s keys, its clients checked by ``auth``.
    Returns the server key pair and the authorized client keys (None: any client)."""
    public, secret = _server_key(curve, section)
    keys = _client_keys(curve, section)
    configure_auth(auth, curve)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return (public, secret), keys


def configure_auth(auth: ThreadAuthenticator, curve: CurveConfig) -> None:
    location = str(curve.authorized_keys_dir) if curve.authorized_keys_dir \
        else zmq.auth.CURVE_ALLOW_ANY
    auth.configure_curve(domain=ZAP_DOMAIN.decode(), location=location)


def _warn_if_exposed(cfg: PublishConfig) -> None:
    """Say it when strangers can reach the socket: what a peer may cost is bounded for single
    frames (MAX_INBOUND_BYTES) but not for the number of distinct subscriptions or the parts of
    a never-ending multipart message (README, "Encryption and access control")."""
    if cfg.curve is not None and cfg.curve.authorized_keys_dir is not None:
        return
    for i, ep in enumerate(cfg.endpoints):
        if exposed(ep):
            logger.warning("publish.endpoints[%d]: %s is reachable from other machines and "
                           "any peer there is let in; use CURVE with authorized_keys_dir "
                           "(README: Encryption and access control)", i, ep)


class _Command:
    """A reconfiguration run by the publisher thread (the socket's only user)."""

    def __init__(self, cfg: PublishConfig) -> None:
        self.cfg = cfg
        self.done = threading.Event()
        self.result: list[str] = []
        self.error: EdgedError | None = None


def _check_ipc_path(path: str, where: str) -> None:
    """Refuse to steal an ipc path a live process is bound to; remove a stale socket file."""
    p = Path(path)
    if not p.parent.is_dir():
        raise PublishError(f"{where}: directory {p.parent} does not exist")
    try:
        mode = p.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise PublishError(f"{where}: cannot check {path}: {e.strerror or e}") from e
    if not stat.S_ISSOCK(mode):
        # Only a socket can be stale; anything else is someone's file: never remove it.
        raise PublishError(f"{where}: {path} exists and is not a socket; choose another path "
                           "or remove that file yourself")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("removing stale ipc socket %s", path)
        try:
            p.unlink(missing_ok=True)
        except OSError as e:
            raise PublishError(f"{where}: cannot remove the stale socket {path}: "
                               f"{e.strerror or e}; remove it or choose another path") from e
        return
    except OSError as e:
        raise PublishError(f"{where}: cannot check {path}: {e.strerror or e}") from e
    finally:
        s.close()
    raise PublishError(f"{where}: {path} is in use by another process (is edged already "
                       "running?); stop it or choose another path")


class _DropQueue:
    """The publisher's bounded queue: `put` never blocks; when full it makes room by dropping
    the oldest det message (there is a newer frame), else the oldest message. An event, count
    or snap message (one per change, not per frame) is thus only lost when ``size`` of them
    wait at once."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: collections.deque[Message] = collections.deque()
        self._cond = threading.Condition()

    def put(self, message: Message) -> bool:
        """False: a message was dropped to make room."""
        with self._cond:
            q = self._items
            room = len(q) < self._size
            if not room:
                for i, m in enumerate(q):
                    if isinstance(m, DetMessage):
                        del q[i]
                        break
                else:
                    q.popleft()
            q.append(message)
            self._cond.notify()
            return room

    def get(self, timeout: float) -> Message:
        """The oldest message; queue.Empty after ``timeout`` seconds without one."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise queue.Empty
            return self._items.popleft()

    def empty(self) -> bool:
        return not self._items


class Publisher(StageThread):
    def __init__(self, cfg: PublishConfig,
                 status_fn: Callable[[], Sequence[Message]]) -> None:
        """``status_fn``: the status messages to send every ``status_interval_s`` (the
        process's and each camera's); their ``seq`` is set here as they are sent."""
        # A daemon thread: a peer flood can keep libzmq busy inside send() for long; the
        # process must still exit within 2 s of SIGTERM (the join below gives up, and an
        # unfinished thread does not hold the interpreter).
        super().__init__("edged-publish", daemon=True)
        self.cfg = cfg
        self._status_fn = status_fn
        self._queue = _DropQueue(QUEUE_SIZE)
        self._status_queue: queue.SimpleQueue[Sequence[Message]] = queue.SimpleQueue()
        self._status_seqs: dict[str, int] = {}  # topic -> the next status seq
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._client_keys: frozenset[bytes] | None = None  # authorized CURVE keys loaded
        self._server: tuple[bytes, bytes] | None = None  # CURVE server key pair in use
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self.bound: tuple[str, ...] = ()  # endpoints bound now (status)
        self._monitor: zmq.Socket[bytes] | None = None  # accepted/closed connection events
        self._accepted: set[int] = set()  # fds of the tcp connections our listeners accepted
        self.dropped = 0  # messages we dropped: queue full, or not encodable (below)
        self.unencodable = 0  # messages JSON cannot carry (NaN from a broken model)
        self.loop_mono = time.monotonic()  # each turn of the loop (the watchdog checks it)
        # Also given every message sent, on this thread (the MQTT bridge's offer: never
        # blocks). Replaced whole, never mutated: another thread swaps it on a reload.
        self.taps: tuple[Callable[[Message], None], ...] = ()

    # --- setup, in the caller's thread before start() --------------------------------------
    def bind(self) -> None:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, self.cfg.sndhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
        sock.setsockopt(zmq.LINGER, self.cfg.linger_ms)
        try:
            # Every peer goes through a ZAP handler, even without CURVE (which allows all):
            # with a ZAP domain set libzmq refuses the ZMTP 1.0/2.0 framing it otherwise still
            # accepts, in which any random bytes a stranger sends become subscriptions (+1 GB
            # in 15 s of churn, benchmarks/churn.py --kinds random-bytes).
            self._start_auth()
            sock.zap_domain = ZAP_DOMAIN
            self._monitor = sock.get_monitor_socket(
                zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
            if self.cfg.curve is not None:
                self._setup_curve(sock, self.cfg.curve)
            for ep in self.cfg.endpoints:
                self._bind_one(sock, self.cfg, ep)
            _warn_if_exposed(self.cfg)
        except BaseException:
            self._close_monitor(sock)
            sock.close(linger=0)
            self._close_context()
            raise
        self._sock = sock

    def _bind_one(self, sock: zmq.Socket[bytes], cfg: PublishConfig, ep: str) -> None:
        bind_endpoint(sock, ep, f"publish.endpoints[{cfg.endpoints.index(ep)}]", cfg.ipc_mode)
        self.bound = (*self.bound, ep)
        logger.info("publishing on %s", ep)

    def _unbind_one(self, sock: zmq.Socket[bytes], ep: str) -> None:
        with contextlib.suppress(zmq.ZMQError):
            sock.unbind(ep)
        self.bound = tuple(e for e in self.bound if e != ep)
        logger.info("no longer publishing on %s", ep)

    def _setup_curve(self, sock: zmq.Socket[bytes], curve: CurveConfig) -> None:
        self._start_auth()
        assert self._auth is not None
        self._server, self._client_keys = serve_curve(sock, self._auth, curve, "publish")

    def _start_auth(self) -> None:
        if self._auth is None:
            self._auth = start_authenticator(self._ctx)

    def _configure_auth(self, curve: CurveConfig) -> None:
        assert self._auth is not None
        configure_auth(self._auth, curve)

    # --- reconfiguration (any thread asks; the publisher thread does it) -------------------
    def keys_changed(self, cfg: PublishConfig) -> bool:
        """Do the CURVE key files say something else than the keys in use (a client key
        added to or removed from authorized_keys_dir, a new server key)? Unreadable: True,
        so that the reload reports why."""
        if cfg.curve is None:
            return False
        try:
            return (_server_key(cfg.curve) != self._server
                    or _client_keys(cfg.curve) != self._client_keys)
        except PublishError:
            return True

    def reconfigure(self, cfg: PublishConfig) -> list[str]:
        """Apply new publish settings, keeping every subscriber connected unless the security
        changed or a client key was revoked (then every connection is reset, so a revoked
        client is cut off at once and the others reconnect by themselves). Returns what
        changed. ``PublishError``: nothing changed (a new endpoint cannot be bound, a key
        cannot be read)."""
        cmd = _Command(cfg)
        self._commands.put(cmd)
        while not cmd.done.wait(0.1):
            if not self.is_alive():
                raise PublishError("the publisher thread has stopped")
        if cmd.error is not None:
            raise cmd.error
        return cmd.result

    def _run_commands(self) -> None:
        while not self._commands.empty():
            cmd = self._commands.get_nowait()
            try:
                cmd.result = self._reconfigure(cmd.cfg)
            except EdgedError as e:
                cmd.error = e
            finally:
                cmd.done.set()

    def _reconfigure(self, new: PublishConfig) -> list[str]:
        """Never unbinds an endpoint that stays: a port released even for a moment can be
        taken by any local process (and subscribers would then reconnect to it)."""
        sock = self._sock
        assert sock is not None
        old = self.cfg
        changes: list[str] = []
        keys = _client_keys(new.curve) if new.curve is not None else None
        server = _server_key(new.curve) if new.curve is not None else None
        if server != self._server:
            # libzmq takes a socket's security options when an endpoint is bound: applying
            # them means unbinding every endpoint, which hands the ports to whoever asks.
            raise PublishError("publish.curve: turning CURVE on or off, or a new server key, "
                               "takes a restart (systemctl restart edged)")
        added = [e for e in new.endpoints if e not in self.bound]
        removed = [e for e in self.bound if e not in new.endpoints]
        for ep in added:
            port = _tcp_port(ep)
            if port is not None and any(_tcp_port(r) == port for r in removed):
                raise PublishError(f"publish.endpoints: {ep} moves an endpoint of edged's to "
                                   "another address on the same port; that takes a restart")
        done: list[str] = []
        try:
            for ep in added:
                self._bind_one(sock, new, ep)
                done.append(ep)
        except PublishError:
            for ep in done:
                self._unbind_one(sock, ep)
            raise
        for ep in removed:
            self._unbind_one(sock, ep)
            changes.append(f"unbound {ep}")
        changes.extend(f"bound {ep}" for ep in done)
        old_keys = self._client_keys
        if new.curve is not None and keys != old_keys:
            self._configure_auth(new.curve)
            self._client_keys = keys
            revoked = len(old_keys - keys) if old_keys is not None and keys is not None \
                else 0
            if keys is not None and (old_keys is None or revoked):
                # ZAP is asked once per connection: a revoked client stays connected until
                # its connection ends. End them all; the others reconnect by themselves.
                closed = self._drop_connections()
                what = revoked if old_keys is not None else "any other key"
                changes.append(f"CURVE: {len(keys)} client keys authorized, {what} revoked "
                               f"({closed} connections closed; the others reconnect)")
            else:
                changes.append(f"CURVE: {len(keys)} client keys authorized"
                               if keys is not None else "CURVE: any client key accepted")
        if new.sndhwm != old.sndhwm:
            sock.setsockopt(zmq.SNDHWM, new.sndhwm)  # for subscribers connecting from now on
            changes.append(f"sndhwm {new.sndhwm} (for new subscribers)")
        if new.linger_ms != old.linger_ms:
            sock.setsockopt(zmq.LINGER, new.linger_ms)
        if new.ipc_mode != old.ipc_mode:
            for ep in self.bound:
                if ep.startswith("ipc://"):
                    os.chmod(ep[6:], new.ipc_mode)
        self.cfg = new
        return changes

    # --- the connections we accepted (to end them when a key is revoked) ------------------
    def _drain_monitor(self) -> None:
        mon = self._monitor
        if mon is None:
            return
        while mon.poll(0):
            event: dict[str, Any] = dict(recv_monitor_message(mon))
            fd = event.get("value")
            if not isinstance(fd, int):
                continue
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._accepted.add(fd)
            else:  # disconnected or closed
                self._accepted.discard(fd)

    def _drop_connections(self) -> int:
        """Shut down every tcp connection our listeners accepted (libzmq then closes it)."""
        self._drain_monitor()
        ours = [(ep[6:].rsplit(":", 1)[0], p) for ep in self.bound
                if (p := _tcp_port(ep)) is not None]
        closed = 0
        for fd in sorted(self._accepted):
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                host, port = s.getsockname()[:2]
                # the fd may have been closed and reused meanwhile (the monitor's events can
                # lag behind): only ever a socket on one of our ports
                if any(p == port and h in ("*", "0.0.0.0", "[::]", host) for h, p in ours):
                    s.shutdown(socket.SHUT_RDWR)
                    closed += 1
            except OSError:
                pass
            finally:
                s.close()
        return closed

    # --- producer side (any thread) ---------------------------------------------------------
    def submit(self, message: Message) -> None:
        """Queue a det, event, count or snap message; never blocks. When full, the oldest
        queued det message is dropped (a newer frame's follows), or, with none queued, the
        oldest message (events are also in the event history)."""
        if not self._queue.put(message):
            self.dropped += 1

    def send_status(self, messages: Sequence[Message]) -> None:
        """Publish these status snapshots (taken at a state change) as soon as possible."""
        self._status_queue.put(messages)

    # --- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        if self._sock is None:
            raise EdgedError("Publisher.start() before bind()")
        super().start()

    def _send(self, message: Message) -> None:
        assert self._sock is not None
        try:
            payload = encode(message)
        except (ValueError, TypeError) as e:
            # A value JSON cannot carry (NaN from a broken model): drop this one message,
            # counted and said once, never the thread that publishes everything else.
            self.unencodable += 1
            self.dropped += 1
            if self.unencodable == 1:
                logger.error("dropping a message that cannot be encoded (%s); further ones are "
                             "only counted (status: publish_dropped)", first_line(e))
            return
        for tap in self.taps:  # the MQTT bridge: an append to its queue
            tap(message)
        frames = [message.topic.encode(), payload]
        if isinstance(message, SnapMessage):
            frames.append(message.jpeg)  # the picture, as a third frame (not in the JSON)
        with contextlib.suppress(zmq.Again):  # PUB drops at HWM by itself; never block here
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)

    def _send_status(self, messages: Sequence[Message] | None = None) -> None:
        """Status messages are numbered here, as they leave: snapshots taken on several
        threads (state changes, the periodic one) reach this thread in any order, and a
        subscriber reads a seq going backwards as lost messages."""
        for message in messages if messages is not None else self._status_fn():
            seq = self._status_seqs.get(message.topic, 0)
            self._status_seqs[message.topic] = seq + 1
            self._send(dataclasses.replace(message, seq=seq))

    def _serve(self) -> None:
        assert self._sock is not None
        next_status = time.monotonic()
        while True:
            self.loop_mono = time.monotonic()
            self._run_commands()
            self._drain_monitor()
            interval = self.cfg.status_interval_s  # a reload may change it
            sent_snapshot = False
            while not self._status_queue.empty():
                self._send_status(self._status_queue.get_nowait())
                sent_snapshot = True
            if sent_snapshot:
                next_status = time.monotonic() + interval
            elif time.monotonic() >= next_status:
                self._send_status()
                next_status = time.monotonic() + interval
            if self._stop.is_set() and self._queue.empty():
                break
            try:
                msg = self._queue.get(timeout=min(0.05, max(next_status - time.monotonic(), 0)))
            except queue.Empty:
                continue
            self._send(msg)
        self._run_commands()  # nobody waits forever on a command sent while stopping
        while not self._status_queue.empty():
            self._send_status(self._status_queue.get_nowait())
        self._send_status()  # the final state (stopping) for late listeners
        assert self._sock is not None
        self._close_monitor(self._sock)
        self._sock.close(linger=self.cfg.linger_ms)
        self._sock = None

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:
            logger.exception("publisher thread failed")  # the service sees it dead and stops
            raise

    def join(self, timeout_s: float) -> bool:
        ended = super().join(timeout_s)
        if ended:
            if self._sock is not None:  # the thread died without closing it: term() would hang
                self._close_monitor(self._sock)
                self._sock.close(linger=0)
                self._sock = None
            self._close_context()
        return ended

    def _close_monitor(self, sock: zmq.Socket[bytes]) -> None:
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def _close_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()
