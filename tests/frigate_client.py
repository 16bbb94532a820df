"""Frigate's ``zmq`` detector client, step for step, for the tests and the benchmark.

Written from Frigate's ``frigate/detectors/plugins/zmq_ipc.py`` (Frigate 0.17, read July 2026),
keeping every step that decides what edged sees and what Frigate does:

- a REQ socket with RCVTIMEO = SNDTIMEO = ``request_timeout_ms`` (200) and LINGER = ``linger_ms``
  (0); the socket is closed and made again after any timeout or ZeroMQ error;
- at start: ``[{"model_request": true, "model_name": <basename of model.path>}]`` with the
  receive timeout raised to 30 s for that answer; ready only if it says available and loaded;
  "available but not loaded" is an error; "not available" makes it upload the model
  (``[{"model_data": true, "model_name": ...}, bytes]``, 30 s) and it is ready only if the answer
  says saved and loaded;
- the handshake is never tried again while not ready: every ``detect_raw`` then returns zeros
  without sending anything (Frigate logs "Model not ready");
- ``detect_raw``: ``[{"shape", "dtype", "model_type"}, tensor bytes]``; the reply is one frame
  of 480 bytes or ``[header, data]`` decoded with the header's shape and dtype; on a timeout or
  ZeroMQ error: a new socket, the handshake again (which does not clear "ready"), zeros.

``handshake_timeout_ms`` is Frigate's hard-coded 30000; tests shorten it to show the behaviour
without waiting 30 s. ``Detector.detect`` is Frigate's ``BaseLocalDetector.detect``: rows in
order, stopping at the first below the threshold.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import numpy as np
import zmq

HANDSHAKE_TIMEOUT_MS = 30_000  # Frigate's
ROWS = 20


class Detector:
    def __init__(self, endpoint: str, model_path: str = "/config/model_cache/edged",
                 request_timeout_ms: int = 200, linger_ms: int = 0,
                 model_type: str = "yolo-generic",
                 handshake_timeout_ms: int = HANDSHAKE_TIMEOUT_MS) -> None:
        self.endpoint = endpoint
        self.model_path = model_path
        self.request_timeout_ms = request_timeout_ms
        self.linger_ms = linger_ms
        self.model_type = model_type
        self.handshake_timeout_ms = handshake_timeout_ms
        self.ctx = zmq.Context()
        self.socket: zmq.Socket[bytes] | None = None
        self.resets = 0  # sockets made again after a timeout or error
        self.timeouts = 0
        self.log: list[str] = []  # what Frigate would have logged (warnings and errors)
        self._create_socket()
        self.model_ready = False
        self.model_name = os.path.basename(model_path)
        self._initialize_model()
        self.zero = np.zeros((ROWS, 6), np.float32)

    def _create_socket(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.close(linger=self.linger_ms)
            self.resets += 1
        self.socket = self.ctx.socket(zmq.REQ)
        self.socket.setsockopt(zmq.RCVTIMEO, self.request_timeout_ms)
        self.socket.setsockopt(zmq.SNDTIMEO, self.request_timeout_ms)
        self.socket.setsockopt(zmq.LINGER, self.linger_ms)
        self.socket.connect(self.endpoint)

    def _initialize_model(self) -> None:
        try:
            if self._check_and_transfer_model():
                self.model_ready = True
            else:
                self.log.append(f"Failed to initialize model {self.model_name}")
        except Exception as e:
            self.log.append(f"Failed to initialize model: {e}")

    def _long_recv(self) -> list[bytes]:
        assert self.socket is not None
        original = self.socket.getsockopt(zmq.RCVTIMEO)
        self.socket.setsockopt(zmq.RCVTIMEO, self.handshake_timeout_ms)
        try:
            return self.socket.recv_multipart()
        finally:
            self.socket.setsockopt(zmq.RCVTIMEO, original)

    def _check_and_transfer_model(self) -> bool:
        assert self.socket is not None
        try:
            header = {"model_request": True, "model_name": self.model_name}
            self.socket.send_multipart([json.dumps(header).encode("utf-8")])
            frames = self._long_recv()
            if len(frames) != 1:
                self.log.append("Received unexpected response format for model availability "
                                "check")
                return False
            try:
                response = json.loads(frames[0].decode("utf-8"))
            except json.JSONDecodeError:
                self.log.append("Received non-JSON response for model availability check")
                return False
            available = response.get("model_available", False)
            loaded = response.get("model_loaded", False)
            if available and loaded:
                return True
            if available and not loaded:
                self.log.append("Model exists but failed to load")
                return False
            return self._send_model_data()
        except Exception as e:
            self.log.append(f"Failed to check and transfer model: {e}")
            return False

    def _send_model_data(self) -> bool:
        assert self.socket is not None
        try:
            if not os.path.exists(self.model_path):
                self.log.append(f"Model file not found: {self.model_path}")
                return False
            with open(self.model_path, "rb") as f:
                data = f.read()
            header = {"model_data": True, "model_name": self.model_name}
            self.socket.send_multipart([json.dumps(header).encode("utf-8"), data])
            frames = self._long_recv()
            if len(frames) != 1:
                self.log.append("Received unexpected response format for model data transfer")
                return False
            try:
                response = json.loads(frames[0].decode("utf-8"))
            except json.JSONDecodeError:
                self.log.append("Received non-JSON response for model data transfer")
                return False
            saved = response.get("model_saved", False)
            loaded = response.get("model_loaded", False)
            if not (saved and loaded):
                self.log.append(f"Model transfer failed: saved={saved}, loaded={loaded}")
            return bool(saved and loaded)
        except Exception as e:
            self.log.append(f"Failed to send model data: {e}")
            return False

    def _decode_response(self, frames: list[bytes]) -> np.ndarray:
        try:
            if len(frames) == 1:
                if len(frames[0]) != ROWS * 6 * 4:
                    self.log.append(f"ZMQ detector received unexpected payload size: "
                                    f"{len(frames[0])}")
                    return self.zero
                return np.frombuffer(frames[0], dtype=np.float32).reshape((ROWS, 6))
            if len(frames) >= 2:
                header = json.loads(frames[0].decode("utf-8"))
                shape = tuple(header.get("shape", []))
                dtype = np.dtype(header.get("dtype", "float32"))
                return np.frombuffer(frames[1], dtype=dtype).reshape(shape)
            self.log.append("ZMQ detector received empty reply")
            return self.zero
        except Exception as e:
            self.log.append(f"ZMQ detector failed to decode response: {e}")
            return self.zero

    def detect_raw(self, tensor_input: np.ndarray) -> np.ndarray:
        if not self.model_ready:
            self.log.append("Model not ready, returning zero detections")
            return self.zero
        assert self.socket is not None
        try:
            header: dict[str, Any] = {"shape": list(tensor_input.shape),
                                      "dtype": str(tensor_input.dtype.name),
                                      "model_type": self.model_type}
            payload = memoryview(tensor_input.tobytes(order="C"))
            self.socket.send_multipart([json.dumps(header).encode("utf-8"), payload])
            return self._decode_response(self.socket.recv_multipart())
        except zmq.Again:
            self.timeouts += 1
            try:
                self._create_socket()
                self._initialize_model()
            except Exception:
                pass
            return self.zero
        except zmq.ZMQError as e:
            self.log.append(f"ZMQ detector ZMQError: {e}; resetting socket")
            try:
                self._create_socket()
                self._initialize_model()
            except Exception:
                pass
            return self.zero

    def detect(self, tensor_input: np.ndarray, labels: dict[int, str],
               threshold: float = 0.4) -> list[tuple[str, float, tuple[float, ...]]]:
        """Frigate's BaseLocalDetector.detect: (label, score, (y_min, x_min, y_max, x_max))."""
        out = []
        for d in self.detect_raw(tensor_input):
            if int(d[0]) < 0 or int(d[0]) >= len(labels):
                self.log.append(f"Raw Detect returned invalid label: {d}")
                continue
            if d[1] < threshold:
                break
            out.append((labels[int(d[0])], float(d[1]), (float(d[2]), float(d[3]),
                                                         float(d[4]), float(d[5]))))
        return out

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        self.ctx.term()


def load_labels(path: str, prefill: int = 91) -> dict[int, str]:
    """Frigate's load_labels (frigate/util/builtin.py): ids prefilled with "unknown"; a file
    whose first word is a number is "<id> <label>" lines, else one label per line."""
    with open(path, encoding="utf-8") as f:
        labels = {i: "unknown" for i in range(prefill)}
        lines = f.readlines()
        if not lines:
            return {}
        if lines[0].split(" ", maxsplit=1)[0].isdigit():
            pairs = [line.split(" ", maxsplit=1) for line in lines]
            labels.update({int(i): label.strip() for i, label in pairs})
        else:
            labels.update({i: line.strip() for i, line in enumerate(lines)})
        return labels


def region_tensor(image_bgr: np.ndarray, size: int, pad_value: int,
                  pixel_format: str = "rgb") -> tuple[np.ndarray, int, int, int]:
    """A Frigate-like input: the image in a square region (padded with ``pad_value``), resized
    to ``size`` x ``size`` with bilinear interpolation, RGB, (1, size, size, 3) uint8. Returns
    (tensor, region side, left pad, top pad) to map the answer back to the image."""
    import cv2

    h, w = image_bgr.shape[:2]
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    region = np.full((side, side, 3), pad_value, np.uint8)
    region[top:top + h, left:left + w] = image_bgr
    resized = cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)
    if pixel_format == "rgb":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return resized[np.newaxis], side, left, top
