"""Python subscribers: a typed iterator over edged's messages.

    from edged.api.client import Subscriber
    with Subscriber(["tcp://127.0.0.1:5556"], topics=["det/"]) as sub:
        for msg in sub:                      # DetMessage | StatusMessage
            for d in msg.detections:
                print(d.label, d.score, d.box)

Malformed messages (bad JSON, wrong schema version, missing fields) are skipped, counted in
``Subscriber.malformed`` and logged at DEBUG; they never end the iteration.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq
import zmq.auth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original frame
    box_norm: tuple[float, float, float, float]


@dataclass(frozen=True)
class DetMessage:
    topic: str
    camera: str
    seq: int
    frame_seq: int
    ts_ns: int
    width: int
    height: int
    model: str
    backend: str
    latency_ms: dict[str, float]
    detections: tuple[Detection, ...]
    raw: dict[str, Any]


@dataclass(frozen=True)
class StatusMessage:
    topic: str
    camera: str
    seq: int
    state: str
    backend: str
    fallback_reason: str | None
    fps_in: float
    fps_out: float
    frames_dropped: int
    raw: dict[str, Any]


Message = DetMessage | StatusMessage


class MalformedMessage(ValueError):
    pass


# What a hostile or broken publisher can put in a payload and Python's json/int/float raise
# for it: bad JSON and 5000-digit integers (ValueError), nesting deeper than the interpreter's
# stack (RecursionError), 1e999 turned into an int (OverflowError).
_DECODE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError)
MAX_MESSAGE_BYTES = 16 << 20  # larger frames are dropped by ZeroMQ before they reach Python


def _num(v: Any) -> float:
    f = float(v)
    if not math.isfinite(f):
        raise MalformedMessage(f"expected a finite number, got {f}")
    return f


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise MalformedMessage(f"expected a string or null, got {type(v).__name__}")
    return v


def _box(v: Any) -> tuple[float, float, float, float]:
    if not isinstance(v, list) or len(v) != 4:
        raise MalformedMessage(f"box must be 4 numbers, got {type(v).__name__}")
    a, b, c, d = (_num(x) for x in v)
    return a, b, c, d


def parse(frames: Sequence[bytes]) -> Message:
    """Turn one multipart message into a typed message, or raise MalformedMessage."""
    if len(frames) != 2:
        raise MalformedMessage(f"expected [topic, payload], got {len(frames)} frames")
    try:
        topic = frames[0].decode()
        data = json.loads(frames[1])
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError, digits
        raise MalformedMessage(f"not UTF-8 JSON: {type(e).__name__}") from e
    if not isinstance(data, dict) or data.get("v") != 1:
        raise MalformedMessage("not a version-1 edged message")
    try:
        if data["kind"] == "detections":
            dets = tuple(Detection(int(d["class_id"]), str(d["label"]), _num(d["score"]),
                                   _box(d["box"]), _box(d["box_norm"]))
                         for d in data["detections"])
            return DetMessage(topic, str(data["camera"]), int(data["seq"]),
                              int(data["frame_seq"]), int(data["ts_ns"]),
                              int(data["frame"]["width"]), int(data["frame"]["height"]),
                              str(data["model"]), str(data["backend"]),
                              {str(k): _num(v) for k, v in data["latency_ms"].items()}, dets,
                              data)
        if data["kind"] == "status":
            return StatusMessage(topic, str(data["camera"]), int(data["seq"]),
                                 str(data["state"]), str(data["backend"]),
                                 _opt_str(data.get("fallback_reason")), _num(data["fps_in"]),
                                 _num(data["fps_out"]), int(data["frames_dropped"]), data)
    except MalformedMessage:
        raise
    except _DECODE_ERRORS as e:
        raise MalformedMessage(f"missing or bad field: {type(e).__name__}") from e
    kind = data.get("kind")
    raise MalformedMessage(f"unknown kind {kind[:40] if isinstance(kind, str) else type(kind)}")


class Subscriber:
    def __init__(self, endpoints: Sequence[str], topics: Sequence[str] = ("det/", "status/"),
                 server_public_key: Path | bytes | None = None,
                 client_certificate: Path | None = None, rcvhwm: int = 1000) -> None:
        """``server_public_key`` (a cert file or the Z85 key) turns CURVE on; the client then
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
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        for ep in endpoints:
            self._sock.connect(ep)
        self.malformed = 0

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next well-formed message, or None if ``timeout_s`` passes first."""
        poll_ms = None if timeout_s is None else max(int(timeout_s * 1000), 0)
        while True:
            if not self._sock.poll(poll_ms):
                return None
            frames = self._sock.recv_multipart()
            try:
                return parse(frames)
            except MalformedMessage as e:
                self.malformed += 1
                logger.debug("skipping malformed message: %s", e)

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
