"""Frigate's ``zmq`` detector, answered: Frigate sends its detection requests to edged's model
on edged's accelerator, next to edged's own cameras.

The protocol is the one Frigate's client speaks (``frigate/detectors/plugins/zmq_ipc.py``, Frigate
0.17): a REQ socket, one request in flight, every send and receive bounded by
``request_timeout_ms`` (200 ms), the socket thrown away and made again after a timeout.

- Handshake, when the detector starts and after every reset: ``[{"model_request": true,
  "model_name": NAME}]`` → ``{"model_available": true, "model_loaded": true}``. edged serves its
  own model whatever NAME is (Frigate names it after ``model.path``). A model upload
  (``{"model_data": true}``, which Frigate sends only when told the model is unavailable) is
  refused: ``{"model_saved": false, "model_loaded": false, "error": ...}``.
- Detection: ``[{"shape": [1, H, W, 3], "dtype": "uint8", "model_type": ...}, tensor bytes]``
  (NHWC uint8; NCHW ``[1, 3, H, W]`` and float32 as ``frigate.input_tensor``/``input_dtype``
  say, mirroring Frigate's ``model`` keys: the header cannot tell float 0..1 from 0..255) →
  ``[{"shape": [20, 6], "dtype": "float32"}, 480 bytes]``: rows ``[class_id, score, y_min,
  x_min, y_max, x_max]`` normalised to the request's image, by score descending, zero rows
  after the last detection.
- Anything else gets the same reply shape with zero rows and an ``"error"`` in the header, so the
  REP socket always answers and never wedges (Frigate reads zero rows as "nothing seen").

Requests go to the one inference worker ahead of every camera's frame (InferenceWorker.ask): a
request waits at most for the frame being inferred when it arrived.

What a peer can cost: one request is bounded (``MAX_SIDE``, two queued per peer), but ZeroMQ
queues the frames of a multipart message that never ends without bound, and Frigate's client
has no CURVE: the endpoint must be reachable by Frigate only (README: Frigate, Security).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from edged.api.messages import FrigateStatus, Percentiles
from edged.config import FrigateConfig
from edged.core.types import Detections
from edged.errors import ConfigError
from edged.pipeline.publish import (
    ZAP_DOMAIN,
    bind_endpoint,
    exposed,
    serve_curve,
    start_authenticator,
)
from edged.pipeline.stage import StageThread
from edged.pipeline.worker import Asked

logger = logging.getLogger(__name__)

ROWS = 20  # Frigate's detection result: (20, 6) float32
MAX_SIDE = 1024  # largest request image side (Frigate's models: 320 or 640)
MAX_HEADER_BYTES = 4096
# One request: its header and a MAX_SIDE² float32 image. ZeroMQ refuses a larger frame before
# allocating it and disconnects the peer.
MAX_FRAME_BYTES = MAX_SIDE * MAX_SIDE * 3 * 4
# Requests queued per peer (Frigate's REQ socket has one in flight). Not 1: with CURVE, libzmq
# then delivers nothing at all (pyzmq 26 / libzmq 4.3, tests/test_frigate.py's CURVE test).
RCVHWM = 2
ANSWER_WAIT_S = 30.0  # the worker's answer, at most (a wedged accelerator: the watchdog's case)
LATENCY_WINDOW = 1000
WARN_EVERY_S = 60.0  # the same refusal reason is logged at most this often
_REPLY_HEADER = json.dumps({"shape": [ROWS, 6], "dtype": "float32"}).encode()
_ZEROS = np.zeros((ROWS, 6), np.float32).tobytes()


class FrigateError(ConfigError):
    """The Frigate endpoint cannot be bound (busy port, ipc path in use, bad keys)."""


class Refused(Exception):
    """A request answered with an error: ``kind`` (fixed text: what the log is rate-limited
    by, never a value the peer chose) and the whole message, for the peer and the status."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def reply_rows(dets: Detections, width: int, height: int) -> np.ndarray:
    """(20, 6) float32 rows ``[class_id, score, y_min, x_min, y_max, x_max]``, normalised to
    the ``width`` x ``height`` image, best score first, zero rows after the last."""
    rows = np.zeros((ROWS, 6), np.float32)
    order = np.argsort(-dets.scores, kind="stable")[:ROWS]
    n = len(order)
    if n:
        boxes = dets.boxes[order]
        rows[:n, 0] = dets.class_ids[order]
        rows[:n, 1] = dets.scores[order]
        rows[:n, 2] = boxes[:, 1] / height
        rows[:n, 3] = boxes[:, 0] / width
        rows[:n, 4] = boxes[:, 3] / height
        rows[:n, 5] = boxes[:, 2] / width
    np.clip(rows[:, 2:], 0.0, 1.0, out=rows[:, 2:])
    return rows


def _json_object(frame: bytes, what: str) -> dict[str, Any]:
    if len(frame) > MAX_HEADER_BYTES:
        raise Refused(f"{what} is too long", f"{len(frame)} bytes, at most {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[...
        raise Refused(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise Refused(f"{what} is not a JSON object")
    return obj


def decode_image(header: dict[str, Any], data: bytes, cfg: FrigateConfig) -> np.ndarray:
    """The request's tensor as an (H, W, 3) uint8 BGR image (what the detector takes), read
    as ``cfg`` says Frigate's ``model`` sends it."""
    shape, dtype = header.get("shape"), header.get("dtype")
    want = "[1, 3, H, W]" if cfg.input_tensor == "nchw" else "[1, H, W, 3]"
    if not (isinstance(shape, list) and len(shape) == 4
            and all(type(v) is int and v > 0 for v in shape)):
        raise Refused(f"shape must be 4 positive integers {want}", str(shape)[:80])
    if shape[0] != 1:
        raise Refused("one image per request: shape[0] must be 1", str(shape))
    nchw = cfg.input_tensor == "nchw"
    h, w, c = (shape[2], shape[3], shape[1]) if nchw else (shape[1], shape[2], shape[3])
    if c != 3:
        raise Refused(f"3 colour channels, {want} (frigate.input_tensor: {cfg.input_tensor}, "
                      "as Frigate's model.input_tensor)", str(shape))
    if h > MAX_SIDE or w > MAX_SIDE:
        raise Refused(f"images up to {MAX_SIDE}x{MAX_SIDE}", f"{w}x{h}")
    expected = "uint8" if cfg.input_dtype == "int" else "float32"
    if dtype != expected:
        raise Refused(f"dtype must be {expected} (frigate.input_dtype: {cfg.input_dtype}, as "
                      "Frigate's model.input_dtype)", str(dtype)[:40])
    size = h * w * 3 * (1 if expected == "uint8" else 4)
    if len(data) != size:
        raise Refused("the tensor frame's size does not fit the shape and dtype",
                      f"{shape} {dtype} is {size} bytes, the frame {len(data)}")
    arr = np.frombuffer(data, np.uint8 if expected == "uint8" else np.float32)
    arr = arr.reshape((3, h, w) if nchw else (h, w, 3))
    if nchw:
        arr = arr.transpose(1, 2, 0)
    if expected == "float32":
        if not np.isfinite(arr).all():
            raise Refused("the float32 tensor holds NaN or infinity")
        values: np.ndarray = arr
        if cfg.input_dtype == "float":  # 0..1; float_denorm: 0..255
            values = values * np.float32(255.0)
        arr = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if cfg.pixel_format == "rgb":
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(arr)


class FrigateServer(StageThread):
    """The thread that owns the REP socket Frigate's detector talks to."""

    def __init__(self, cfg: FrigateConfig, model_name: Callable[[], str]) -> None:
        # A daemon thread: it may wait for an answer from an invoke stuck in a driver.
        super().__init__("edged-frigate", daemon=True)
        self.cfg = cfg
        self._model_name = model_name
        self._ask: Callable[[np.ndarray], Asked] | None = None  # None: still warming up
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._lock = threading.Lock()  # the counters: this thread writes, status reads
        self._latency = collections.deque[float](maxlen=LATENCY_WINDOW)
        self.handshakes = self.requests = self.refused = self.late = 0
        self.last_error: str | None = None
        self._names: set[str] = set()  # model names Frigate asked for (logged once each)
        self._warned: dict[str, float] = {}  # kind of refusal -> last logged (monotonic)

    # --- setup, in the caller's thread before start() --------------------------------------
    def bind(self) -> None:
        ep, where = self.cfg.endpoint, "frigate.endpoint"
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.REP)
        try:
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            sock.setsockopt(zmq.RCVHWM, RCVHWM)
            sock.setsockopt(zmq.LINGER, 0)
            if self.cfg.curve is not None:
                self._auth = start_authenticator(self._ctx)
                sock.zap_domain = ZAP_DOMAIN
                serve_curve(sock, self._auth, self.cfg.curve, "frigate")
            bind_endpoint(sock, ep, where, self.cfg.ipc_mode)
        except ConfigError as e:
            self._close(sock)
            raise FrigateError(str(e)) from None
        except BaseException:
            self._close(sock)
            raise
        self._sock = sock
        if exposed(ep) and (self.cfg.curve is None or self.cfg.curve.authorized_keys_dir is None):
            logger.warning("%s: %s is reachable from other machines and any peer there may ask "
                           "for detections; bind it to the address Frigate reaches, behind a "
                           "firewall (README: Frigate)", where, ep)
        logger.info("answering Frigate's detector on %s", ep)

    def serve(self, ask: Callable[[np.ndarray], Asked]) -> None:
        """Detection requests go to ``ask`` from now on (before: refused, warming up)."""
        self._ask = ask

    # --- status (any thread) ---------------------------------------------------------------
    def status(self) -> FrigateStatus:
        with self._lock:
            lat = list(self._latency)
            counts = self.handshakes, self.requests, self.refused, self.late
            last = self.last_error
        p = None
        if lat:
            p50, p90, p99 = (round(float(x), 3) for x in np.percentile(lat, [50, 90, 99]))
            p = Percentiles(p50, p90, p99)
        return FrigateStatus(self.cfg.endpoint, *counts, latency_ms=p, last_error=last)

    # --- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        sock = self._sock
        assert sock is not None, "bind() first"
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                t0 = time.monotonic()
                try:
                    reply = self._handle(frames)
                except Exception as e:  # a bug: said loudly (once a minute), still answering
                    if self._due("internal error"):
                        logger.exception("Frigate request failed")
                    reply = self._refusal(Refused("internal error", type(e).__name__))
                try:
                    sock.send_multipart(reply, zmq.NOBLOCK)
                except zmq.ZMQError as e:  # the peer is gone: REP drops the reply itself
                    logger.debug("reply to Frigate not sent: %s", e)
                ms = (time.monotonic() - t0) * 1e3
                with self._lock:
                    if len(reply) == 2 and reply[0] is _REPLY_HEADER:
                        self._latency.append(ms)
                    self.late += ms > self.cfg.request_timeout_ms
        finally:
            self._close(sock)

    def _handle(self, frames: list[bytes]) -> list[bytes]:
        try:
            if len(frames) == 1:
                return [self._control(_json_object(frames[0], "a one-frame request"))]
            if len(frames) == 2:
                header = _json_object(frames[0], "the request header")
                if header.get("model_data"):
                    return [self._refuse_upload(header)]
                return self._detect(header, frames[1])
            raise Refused("a request is [header, tensor] or [model request]",
                          f"got {len(frames)} frames")
        except Refused as e:
            return self._refusal(e)

    def _control(self, msg: dict[str, Any]) -> bytes:
        if msg.get("model_request"):
            name = str(msg.get("model_name"))[:200]
            served = self._model_name()
            with self._lock:
                self.handshakes += 1
                first = name not in self._names and len(self._names) < 100
                if first:
                    self._names.add(name)
            (logger.info if first else logger.debug)(
                "Frigate's detector asked for model %r: edged answers with %s", name, served)
            return json.dumps({"model_available": True, "model_loaded": True,
                               "served_model": served}).encode()
        if msg.get("model_data"):
            return self._refuse_upload(msg)
        raise Refused('a one-frame request must be a model request {"model_request": true}')

    def _refuse_upload(self, msg: dict[str, Any]) -> bytes:
        why = (f"edged serves its own model ({self._model_name()}) and takes no uploads; "
               "Frigate uploads only when told a model is unavailable")
        self._count_refusal("model upload refused", str(msg.get("model_name"))[:80])
        return json.dumps({"model_saved": False, "model_loaded": False, "error": why}).encode()

    def _detect(self, header: dict[str, Any], data: bytes) -> list[bytes]:
        image = decode_image(header, data, self.cfg)
        ask = self._ask
        if ask is None:
            raise Refused("edged is still warming up its model; no detections yet")
        asked = ask(image)
        deadline = time.monotonic() + ANSWER_WAIT_S
        while not asked.done.wait(0.05):
            if self._stop.is_set() or time.monotonic() > deadline:
                asked.cancelled = True
                raise Refused("stopping" if self._stop.is_set() else
                              f"no answer from inference within {ANSWER_WAIT_S:.0f} s")
        if asked.error is not None or asked.dets is None:
            raise Refused("inference failed", asked.error or "stopped")
        h, w = image.shape[:2]
        with self._lock:
            self.requests += 1
        return [_REPLY_HEADER, reply_rows(asked.dets, w, h).tobytes()]

    def _refusal(self, e: Refused) -> list[bytes]:
        self._count_refusal(e.kind, str(e))
        header = json.dumps({"shape": [ROWS, 6], "dtype": "float32", "error": str(e)}).encode()
        return [header, _ZEROS]

    def _count_refusal(self, kind: str, why: str) -> None:
        if self._due(kind):
            logger.warning("Frigate request refused: %s", why)
        with self._lock:
            self.refused += 1
            self.last_error = why

    def _due(self, kind: str) -> bool:
        """May a line of this kind be logged now (once a minute per kind; the kinds are fixed
        texts, never a peer's values)?"""
        now = time.monotonic()
        with self._lock:
            last = self._warned.get(kind)
            if last is not None and now - last < WARN_EVERY_S:
                return False
            if len(self._warned) > 100:
                self._warned.clear()
            self._warned[kind] = now
            return True

    def _close(self, sock: zmq.Socket[bytes]) -> None:
        try:
            sock.close(linger=0)
        finally:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            self._ctx.term()
