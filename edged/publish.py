"""The publisher: the one thread that owns the ZeroMQ PUB socket.

Detection messages arrive through a small bounded queue (oldest dropped and counted when full);
status messages are sent every ``status_interval_s`` and at once on every state change. PUB never
blocks: at SNDHWM ZeroMQ drops messages for the slow subscriber only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edged.config import PublishConfig
from edged.errors import ConfigError, EdgedError
from edged.messages import encode, topic
from edged.stage import StageThread

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


class PublishError(ConfigError):
    """An endpoint cannot be bound (busy port, ipc path held by another process, ...)."""


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
        p.unlink(missing_ok=True)
        return
    except OSError as e:
        raise PublishError(f"{where}: cannot check {path}: {e.strerror or e}") from e
    finally:
        s.close()
    raise PublishError(f"{where}: {path} is in use by another process (is edged already "
                       "running?); stop it or choose another path")


class Publisher(StageThread):
    def __init__(self, cfg: PublishConfig, camera: str,
                 status_fn: Callable[[], dict[str, Any]]) -> None:
        super().__init__("edged-publish")
        self.cfg = cfg
        self.camera = camera
        self._status_fn = status_fn
        self._det_topic = topic("det", camera)
        self._status_topic = topic("status", camera)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._status_queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._auth: ThreadAuthenticator | None = None
        self.dropped = 0  # det messages dropped because our queue was full

    # --- setup, in the caller's thread before start() --------------------------------------
    def bind(self) -> None:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, self.cfg.sndhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
        sock.setsockopt(zmq.LINGER, self.cfg.linger_ms)
        try:
            if self.cfg.curve is not None:
                self._setup_curve(sock)
            for i, ep in enumerate(self.cfg.endpoints):
                where = f"publish.endpoints[{i}]"
                if ep.startswith("ipc://"):
                    _check_ipc_path(ep[6:], where)
                try:
                    sock.bind(ep)
                except zmq.ZMQError as e:
                    hint = " (another process is using the port)" \
                        if e.errno == errno.EADDRINUSE else ""
                    raise PublishError(f"{where}: cannot bind {ep}: {e.strerror}{hint}") from e
                if ep.startswith("ipc://"):
                    os.chmod(ep[6:], self.cfg.ipc_mode)
                logger.info("publishing on %s", ep)
        except BaseException:
            sock.close(linger=0)
            self._close_context()
            raise
        self._sock = sock

    def _setup_curve(self, sock: zmq.Socket[bytes]) -> None:
        curve = self.cfg.curve
        assert curve is not None
        try:
            public, secret = zmq.auth.load_certificate(str(curve.server_secret_key))
        except (OSError, ValueError) as e:
            raise PublishError(f"publish.curve.server_secret_key: cannot load "
                               f"{curve.server_secret_key}: {e}") from e
        if secret is None:
            raise PublishError(f"publish.curve.server_secret_key: {curve.server_secret_key} "
                               "holds no secret key (use the .key_secret file)")
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        location = str(curve.authorized_keys_dir) if curve.authorized_keys_dir \
            else zmq.auth.CURVE_ALLOW_ANY
        self._auth.configure_curve(domain="*", location=location)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True

    # --- producer side (any thread) ---------------------------------------------------------
    def submit(self, message: dict[str, Any]) -> None:
        """Queue a det message; never blocks. When full, the oldest queued one is dropped."""
        while True:
            try:
                self._queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def send_status(self, message: dict[str, Any]) -> None:
        """Publish this status snapshot (taken at a state change) as soon as possible."""
        self._status_queue.put(message)

    # --- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        if self._sock is None:
            raise EdgedError("Publisher.start() before bind()")
        super().start()

    def _send(self, t: bytes, message: dict[str, Any]) -> None:
        assert self._sock is not None
        with contextlib.suppress(zmq.Again):  # PUB drops at HWM by itself; never block here
            self._sock.send_multipart([t, encode(message)], flags=zmq.NOBLOCK)

    def _send_status(self, message: dict[str, Any] | None = None) -> None:
        self._send(self._status_topic, message if message is not None else self._status_fn())

    def _run(self) -> None:
        interval = self.cfg.status_interval_s
        next_status = time.monotonic()
        while True:
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
            self._send(self._det_topic, msg)
        while not self._status_queue.empty():
            self._send_status(self._status_queue.get_nowait())
        self._send_status()  # the final state (stopping) for late listeners
        assert self._sock is not None
        self._sock.close(linger=self.cfg.linger_ms)
        self._sock = None

    def join(self, timeout_s: float) -> bool:
        ended = super().join(timeout_s)
        if ended:
            self._close_context()
        return ended

    def _close_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()
