"""Calibration / report images: files, directories of images, and video files (sampled frames)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".ts"}


@dataclass(frozen=True)
class Sample:
    name: str  # "path" or "path#frame"
    image: np.ndarray  # (H, W, 3) uint8 BGR


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Directories become their image and video files (sorted); files stay as given."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir()
                              if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        else:
            out.append(p)
    return out


def load_samples(paths: Iterable[str | Path], frames_per_video: int = 16) -> list[Sample]:
    """Read images (and evenly spaced video frames); unreadable files are skipped with a warning."""
    samples: list[Sample] = []
    for p in expand(paths):
        if p.suffix.lower() in VIDEO_SUFFIXES:
            got = _video_frames(p, frames_per_video)
            if not got:
                logger.warning("skipping %s: no frames could be read", p)
            samples.extend(got)
            continue
        img = cv2.imread(str(p), cv2.IMREAD_COLOR) if p.is_file() else None
        if img is None or img.size == 0:
            logger.warning("skipping %s: not a readable image", p)
            continue
        samples.append(Sample(str(p), img))
    return samples


def _video_frames(path: Path, count: int) -> list[Sample]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return []
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        step = max(1, total // max(count, 1)) if total > 0 else 1
        out: list[Sample] = []
        idx = 0
        while len(out) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if idx % step == 0:
                out.append(Sample(f"{path}#{idx}", frame))
            idx += 1
        return out
    finally:
        cap.release()
