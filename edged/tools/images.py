"""Images and video frames read from the user's files, within bounds: calibration and report
samples for ``edged export``, and the one image/video reader ``detect``, ``bench`` and ``eval``
use.

Pixel bound: OpenCV refuses to decode an image above ``OPENCV_IO_MAX_IMAGE_PIXELS`` (the
``edged`` command sets it for every subcommand before OpenCV loads; its own default is 2**30,
a 20000x20000 PNG decoded to 2.4 GB). That variable is imread-only: videos are held to the same
bound here, from the frame size the container declares, before a frame is decoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".ts"}
OPENCV_DEFAULT_MAX_PIXELS = 1 << 30
# Calibration and report samples larger than this (either side) are shrunk on load: the network
# sees at most a few hundred pixels a side, and 16 full-size video frames were 3.4 GB.
SAMPLE_MAX_SIDE = 1920


@dataclass(frozen=True)
class Sample:
    name: str  # "path" or "path#frame"
    image: np.ndarray  # (H, W, 3) uint8 BGR


def max_image_pixels() -> int:
    """The pixel bound OpenCV applies to images in this process (its environment variable,
    read the way OpenCV reads it); videos are held to the same."""
    try:
        value = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", OPENCV_DEFAULT_MAX_PIXELS))
    except ValueError:
        return OPENCV_DEFAULT_MAX_PIXELS
    return value if value > 0 else OPENCV_DEFAULT_MAX_PIXELS


def read_image(path: Path) -> np.ndarray | str | None:
    """The image (H, W, 3) uint8 BGR, or why OpenCV refused it (str), or None if it is not an
    image at all."""
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as e:  # e.g. a header claiming more pixels than OPENCV_IO_MAX_IMAGE_PIXELS
        too_big = "CV_IO_MAX_IMAGE_PIXELS" in str(e) or "Insufficient memory" in str(e)
        return "image too large to decode" if too_big else "not a readable image"
    if img is None or img.size == 0:
        return None
    out: np.ndarray = img
    return out


def open_video(path: Path) -> cv2.VideoCapture | str:
    """An opened capture of the video file ``path``, or why not (str): not a video, or frames
    above the pixel bound (checked on the declared frame size, before decoding one)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        return "not a readable image or video"
    w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if w * h > max_image_pixels():
        cap.release()
        return f"video frames too large to decode ({w}x{h})"
    return cap


def read_frame(cap: cv2.VideoCapture) -> np.ndarray | None:
    """The next frame, or None at the end (or if the decoder fails, or a frame is larger than
    the pixel bound: a stream can change size after its header)."""
    try:
        ok, frame = cap.read()
    except cv2.error:
        return None
    if not ok or frame is None or frame.size == 0:
        return None
    if frame.shape[0] * frame.shape[1] > max_image_pixels():
        return None
    out: np.ndarray = frame
    return out


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


def _shrunk(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= SAMPLE_MAX_SIDE:
        return img
    f = SAMPLE_MAX_SIDE / max(h, w)
    out: np.ndarray = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))),
                                 interpolation=cv2.INTER_AREA)
    return out


def load_samples(paths: Iterable[str | Path], frames_per_video: int = 16) -> list[Sample]:
    """Read images (and evenly spaced video frames), each shrunk to fit SAMPLE_MAX_SIDE;
    unreadable files are skipped with a warning."""
    samples: list[Sample] = []
    for p in expand(paths):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            got = _video_frames(p, frames_per_video)
            if isinstance(got, str):
                logger.warning("skipping %s: %s", p, got)
                continue
            if not got:
                logger.warning("skipping %s: no frames could be read", p)
            samples.extend(got)
            continue
        img = read_image(p) if p.is_file() else None
        if img is None or isinstance(img, str):
            logger.warning("skipping %s: %s", p, img or "not a readable image")
            continue
        samples.append(Sample(str(p), _shrunk(img)))
    return samples


def _video_frames(path: Path, count: int) -> list[Sample] | str:
    cap = open_video(path)
    if isinstance(cap, str):
        return cap
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        step = max(1, total // max(count, 1)) if total > 0 else 1
        out: list[Sample] = []
        idx = 0
        while len(out) < count:
            frame = read_frame(cap)
            if frame is None:
                break
            if idx % step == 0:
                out.append(Sample(f"{path}#{idx}", _shrunk(frame)))
            idx += 1
        return out
    finally:
        cap.release()
