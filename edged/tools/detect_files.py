"""`edged detect`: run the engine over image and video files, optionally drawing the results.

Yields one result per image or video frame, or one error per unreadable source; never prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edged.core.types import Detections
from edged.engine.detector import Detector, DetectParams
from edged.errors import EdgedError, UsageError
from edged.tools import images as calib

logger = logging.getLogger(__name__)


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


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in calib.VIDEO_SUFFIXES


def _identity(path: Path, follow: bool) -> tuple[int, int] | None:
    try:
        st = path.stat() if follow else path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class AnnotateDir:
    """Where annotated copies go, and under which names.

    An output never replaces one of the inputs (that source is refused instead: choose another
    directory), two inputs with the same stem get distinct names (``x.jpg``, ``x-1.jpg``), and
    a file is written in a private temporary directory inside DIR, then renamed over the final
    name: a symlink planted there is replaced, never written through. An output left by an
    earlier run is replaced.
    """

    def __init__(self, directory: Path, inputs: Sequence[Path]) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--annotate {directory}: cannot create the directory: "
                             f"{e.strerror or e}") from e
        if not directory.is_dir():
            raise UsageError(f"--annotate {directory}: not a directory")
        self.directory = directory
        # An input given as a symlink counts twice: the link itself and the file it names.
        self._inputs = {i for p in inputs for i in (_identity(p, True), _identity(p, False))
                        if i is not None}
        self._taken: set[str] = set()

    def claim(self, source: Path, suffix: str) -> Path | str:
        """The output path for ``source`` (``<stem><suffix>``, made unique in this run), or
        why there is none (str)."""
        n = 0
        while True:
            name = f"{source.stem}{f'-{n}' if n else ''}{suffix}"
            if name not in self._taken:
                break
            n += 1
        self._taken.add(name)
        out = self.directory / name
        if _identity(out, False) in self._inputs:
            return (f"its annotated copy {out} would replace an input file; "
                    "choose another --annotate directory")
        return out

    @contextmanager
    def writing(self, out: Path) -> Iterator[Path]:
        """A path to write ``out``'s content to; renamed onto ``out`` if the block succeeds."""
        tmp = Path(tempfile.mkdtemp(prefix=".edged-", dir=self.directory))
        try:
            part = tmp / out.name
            yield part
            if part.is_file():
                try:
                    os.replace(part, out)
                except OSError as e:
                    raise UsageError(f"cannot write {out}: {e.strerror or e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def run_detect(detector: Detector, paths: Sequence[Path], params: DetectParams,
               annotate_dir: Path | None = None) -> Iterator[FrameResult | SourceError]:
    labels = detector.spec.labels
    outputs = AnnotateDir(annotate_dir, paths) if annotate_dir is not None else None
    for path in paths:
        if not path.is_file():
            yield SourceError(str(path), "no such file")
            continue
        img = None if _is_video(path) else calib.read_image(path)
        if img is None or isinstance(img, str):
            if _is_video(path) or path.suffix.lower() not in calib.IMAGE_SUFFIXES:
                yield from _video(detector, path, params, outputs, labels)
            else:
                yield SourceError(str(path), img or "not a readable image")
            continue
        out = outputs.claim(path, ".jpg") if outputs is not None else None
        if isinstance(out, str):
            yield SourceError(str(path), out)
            continue
        dets = detector.detect(img, params)
        if outputs is not None and out is not None:
            with outputs.writing(out) as part:
                if not cv2.imwrite(str(part), annotate(img, dets, labels)):
                    raise EdgedError(f"cannot write {out}")
            logger.info("annotated %s: %s", path, out)
        yield FrameResult(str(path), None, img.shape[1], img.shape[0], dets)


def _video(detector: Detector, path: Path, params: DetectParams, outputs: AnnotateDir | None,
           labels: Sequence[str]) -> Iterator[FrameResult | SourceError]:
    cap = calib.open_video(path)
    if isinstance(cap, str):
        yield SourceError(str(path), cap)
        return
    with contextlib.ExitStack() as stack:
        stack.callback(cap.release)
        frame = calib.read_frame(cap)
        if frame is None:
            yield SourceError(str(path), "not a readable image or video")
            return
        writer: cv2.VideoWriter | None = None
        if outputs is not None:
            out = outputs.claim(path, "_annotated.mp4")
            if isinstance(out, str):
                yield SourceError(str(path), out)
                return
            part = stack.enter_context(outputs.writing(out))
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            writer = cv2.VideoWriter(str(part), cv2.VideoWriter.fourcc(*"mp4v"), fps,
                                     (frame.shape[1], frame.shape[0]))
            stack.callback(writer.release)  # runs before the rename
        idx = 0
        while frame is not None:
            dets = detector.detect(frame, params)
            if writer is not None:
                writer.write(annotate(frame, dets, labels))
            yield FrameResult(str(path), idx, frame.shape[1], frame.shape[0], dets)
            idx += 1
            frame = calib.read_frame(cap)
        if writer is not None:
            logger.info("annotated %s: %s", path, out)
