"""`edged detect`: run the engine over image and video files, optionally drawing the results.

Yields one result per image or video frame, or one error per unreadable source; never prints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edged.export.calib import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from edged.inference.detector import Detector, DetectParams
from edged.types import Detections


@dataclass(frozen=True)
class FrameResult:
    source: str
    frame: int | None  # None for still images
    width: int
    height: int
    detections: Detections


@dataclass(frozen=True)
class SourceError:
    source: str
    message: str


def _palette(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(class_id * 7919 + 17)
    b, g, r = (int(v) for v in rng.integers(64, 256, 3))
    return b, g, r


def annotate(frame: np.ndarray, dets: Detections, labels: Sequence[str]) -> np.ndarray:
    """A copy of ``frame`` with boxes and "label score" tags drawn on it."""
    out: np.ndarray = frame.copy()
    thick = max(1, round(min(frame.shape[:2]) / 300))
    for box, score, cls in zip(dets.boxes, dets.scores, dets.class_ids, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        color = _palette(int(cls))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = f"{labels[cls] if cls < len(labels) else cls} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = max(y1, th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base - 2), (x1 + tw + 2, ty), color, -1)
        cv2.putText(out, text, (x1 + 1, ty - base - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _read_image(path: Path) -> np.ndarray | str | None:
    """The image, or why OpenCV refused it (str), or None if it is not an image at all."""
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as e:  # e.g. a header claiming more pixels than OPENCV_IO_MAX_IMAGE_PIXELS
        too_big = "CV_IO_MAX_IMAGE_PIXELS" in str(e) or "Insufficient memory" in str(e)
        return "image too large to decode" if too_big else "not a readable image"
    if img is None or img.size == 0:
        return None
    out: np.ndarray = img
    return out


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def run_detect(detector: Detector, paths: Sequence[Path], params: DetectParams,
               annotate_dir: Path | None = None) -> Iterator[FrameResult | SourceError]:
    labels = detector.spec.labels
    if annotate_dir is not None:
        annotate_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if not path.is_file():
            yield SourceError(str(path), "no such file")
            continue
        img = None if _is_video(path) else _read_image(path)
        if img is None or isinstance(img, str):
            if _is_video(path) or path.suffix.lower() not in IMAGE_SUFFIXES:
                yield from _video(detector, path, params, annotate_dir, labels)
            else:
                yield SourceError(str(path), img or "not a readable image")
            continue
        dets = detector.detect(img, params)
        if annotate_dir is not None:
            cv2.imwrite(str(annotate_dir / f"{path.stem}.jpg"), annotate(img, dets, labels))
        yield FrameResult(str(path), None, img.shape[1], img.shape[0], dets)


def _video(detector: Detector, path: Path, params: DetectParams, annotate_dir: Path | None,
           labels: Sequence[str]) -> Iterator[FrameResult | SourceError]:
    cap = cv2.VideoCapture(str(path))
    writer: cv2.VideoWriter | None = None
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok or frame is None:
            yield SourceError(str(path), "not a readable image or video")
            return
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        idx = 0
        while ok and frame is not None:
            dets = detector.detect(frame, params)
            if annotate_dir is not None:
                if writer is None:
                    out_path = annotate_dir / f"{path.stem}_annotated.mp4"
                    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter.fourcc(*"mp4v"),
                                             fps, (frame.shape[1], frame.shape[0]))
                writer.write(annotate(frame, dets, labels))
            yield FrameResult(str(path), idx, frame.shape[1], frame.shape[0], dets)
            idx += 1
            ok, frame = cap.read()
    finally:
        cap.release()
        if writer is not None:
            writer.release()
