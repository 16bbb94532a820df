"""Detections as JSON-ready dicts: the one encoding shared by `edged detect --json` and the
daemon's ``det/<camera>`` messages (README, "Message schema")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edged.types import Detections


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
