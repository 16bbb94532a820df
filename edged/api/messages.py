"""Detections as JSON-ready dicts: the one encoding shared by `edged detect --json` and the
daemon's ``det/<camera>`` messages (README, "Message schema")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edged.core.types import Detections


def detection_dicts(dets: Detections, labels: Sequence[str], width: int,
                    height: int) -> list[dict[str, Any]]:
    """``box`` is xyxy in pixels of the original frame; ``box_norm`` the same / width, height."""
    out = []
    for box, score, cls in zip(dets.boxes.tolist(), dets.scores.tolist(),
                               dets.class_ids.tolist(), strict=True):
        out.append({
            "class_id": cls,
            "label": labels[cls] if 0 <= cls < len(labels) else str(cls),
            "score": round(score, 4),
            "box": [round(v, 1) for v in box],
            "box_norm": [round(box[0] / width, 4), round(box[1] / height, 4),
                         round(box[2] / width, 4), round(box[3] / height, 4)],
        })
    return out


SCHEMA_VERSION = 1


def topic(kind: str, camera: str) -> bytes:
    """``det/<camera>`` or ``status/<camera>``: no topic of one kind prefixes the other."""
    return f"{kind}/{camera}".encode()


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def det_message(*, camera: str, seq: int, frame_seq: int, ts_ns: int, width: int, height: int,
                model: str, backend: str, latency_ms: dict[str, float],
                detections: list[dict[str, Any]]) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "kind": "detections", "camera": camera, "seq": seq,
            "frame_seq": frame_seq, "ts_ns": ts_ns, "frame": {"width": width, "height": height},
            "model": model, "backend": backend, "latency_ms": latency_ms,
            "detections": detections}


def status_message(*, camera: str, seq: int, state: str, ts_ns: int, uptime_s: float,
                   model: str, backend: str, fallback_reason: str | None, runtime: str,
                   fps_in: float, fps_out: float, frames_in: int, frames_out: int,
                   frames_dropped: int, source: str, source_reason: str | None,
                   source_size: tuple[int, int] | None,
                   reconnects: int, latency_ms: dict[str, dict[str, float]],
                   published_dropped: int, endpoints: Sequence[str],
                   reload: dict[str, Any] | None) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "kind": "status", "camera": camera, "seq": seq,
            "state": state, "ts_ns": ts_ns, "uptime_s": round(uptime_s, 3), "model": model,
            "backend": backend, "fallback_reason": fallback_reason, "runtime": runtime,
            "fps_in": round(fps_in, 2), "fps_out": round(fps_out, 2), "frames_in": frames_in,
            "frames_out": frames_out, "frames_dropped": frames_dropped,
            "source": {"uri": source, "reason": source_reason, "reconnects": reconnects,
                       "size": list(source_size) if source_size else None},
            "latency_ms": latency_ms, "publish_dropped": published_dropped,
            "endpoints": list(endpoints), "reload": reload}
