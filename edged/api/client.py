"""Python subscribers: a typed iterator over edged's messages.

    from edged.api.client import Subscriber
    with Subscriber(["tcp://127.0.0.1:5556"], topics=["det/"], cameras=["balcony"]) as sub:
        for msg in sub:  # DetMessage (and StatusMessage, ProcessStatus, EventMessage, ...)
            for d in msg.detections:
                print(d.label, d.score, d.box)

Malformed messages (bad JSON, wrong schema version, missing fields) are skipped, counted in
``Subscriber.malformed`` and logged at DEBUG; they never end the iteration.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import zmq
import zmq.auth

from edged.api.messages import (
    KINDS,
    CountMessage,
    Detection,
    DetMessage,
    EventMessage,
    MalformedMessage,
    Message,
    Occupancy,
    ProcessStatus,
    Published,
    SnapMessage,
    StatusMessage,
    decode,
    topic_str,
)

__all__ = ["CountMessage", "DetMessage", "Detection", "EventMessage", "MalformedMessage",
           "Message", "Occupancy", "ProcessStatus", "SnapMessage", "StatusMessage",
           "Subscriber", "parse", "topics_for"]

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 << 20  # larger frames are dropped by ZeroMQ before they reach Python


def parse(frames: Sequence[bytes]) -> Message:
    """Turn one multipart message into a typed message, or raise MalformedMessage."""
    if len(frames) not in (2, 3):
        raise MalformedMessage(f"expected [topic, payload] or [topic, header, JPEG], got "
                               f"{len(frames)} frames")
    try:
        topic = frames[0].decode()
    except UnicodeDecodeError as e:
        raise MalformedMessage("the topic is not UTF-8") from e
    msg = decode(frames[1], topic)
    if topic != msg.topic_of():  # the header's camera is the topic's (what was subscribed)
        raise MalformedMessage(f"a {msg.KIND} message about {msg.topic_of()!r} on topic "
                               f"{topic[:80]!r}")
    if isinstance(msg, SnapMessage) != (len(frames) == 3):
        raise MalformedMessage(f"a {msg.KIND} message of {len(frames)} frames (a snap has 3: "
                               "topic, header, JPEG; the others 2)")
    if isinstance(msg, SnapMessage):
        return dataclasses.replace(msg, jpeg=bytes(frames[2]))
    return msg


CAMERA_KINDS = tuple(k.TOPIC for k in KINDS if issubclass(k, Published))


def topics_for(topics: Sequence[str], cameras: Sequence[str] | None) -> list[str]:
    """The subscriptions for ``topics`` narrowed to ``cameras``: a kind prefix (``det/``,
    ``status/``) becomes one topic per camera (``det/roof/``); other topics stay as they are
    (``process/`` has no camera)."""
    if not cameras:
        return list(topics)
    out: list[str] = []
    for t in topics:
        kind = t.rstrip("/")
        if kind in CAMERA_KINDS:
            out += [topic_str(kind, c) for c in cameras]
        elif t.startswith(tuple(f"{k}/" for k in CAMERA_KINDS)):
            raise ValueError(f"{t!r} is one camera's topic already: with cameras, give kinds "
                             "(det/, status/)")
        else:
            out.append(t)
    return out


class Subscriber:
    def __init__(self, endpoints: Sequence[str], topics: Sequence[str] = ("det/", "status/"),
                 server_public_key: Path | bytes | None = None,
                 client_certificate: Path | None = None, rcvhwm: int = 1000,
                 cameras: Sequence[str] | None = None) -> None:
        """``topics``: kinds (``det/``, ``status/``, ``process/``) or whole topics
        (``det/roof/``); ``cameras``: only these cameras' messages of those kinds.
        ``server_public_key`` (a cert file or the Z85 key) turns CURVE on; the client then
        uses ``client_certificate`` (a secret cert file) or a fresh ephemeral key pair."""
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if server_public_key is not None:
            if isinstance(server_public_key, Path):
                server_public_key, _ = zmq.auth.load_certificate(str(server_public_key))
            if client_certificate is not None:
                pub, sec = zmq.auth.load_certificate(str(client_certificate))
                if sec is None:
                    raise ValueError(f"{client_certificate} holds no secret key")
            else:
                pub, sec = zmq.curve_keypair()
            self._sock.curve_serverkey = server_public_key
            self._sock.curve_publickey = pub
            self._sock.curve_secretkey = sec
        for t in topics_for(topics, cameras):
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        for ep in endpoints:
            self._sock.connect(ep)
        self.malformed = 0

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next well-formed message, or None if ``timeout_s`` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + max(timeout_s, 0.0)
        while True:
            # the deadline holds while malformed messages keep arriving, too
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not self._sock.poll(None if left is None else int(left * 1000)):
                return None
            frames = self._sock.recv_multipart()
            try:
                return parse(frames)
            except MalformedMessage as e:
                self.malformed += 1
                logger.debug("skipping malformed message: %s", e)
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
