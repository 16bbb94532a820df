#!/usr/bin/env python3
"""CPU per frame of what edged does around the invoke, measured without the noise around it.

    python benchmarks/hotpath.py [--repo DIR] [--frames 600] [--rounds 5]

On frames of the bundled clip decoded beforehand (video decoding is the camera's cost, the same
for any code), one thread runs edged's per-frame work: letterbox into the input tensor, invoke,
decode + NMS, the det message built and encoded. It prints the process CPU per frame of that
loop and of the bare invoke on the same frames, and their difference: what edged's own code
costs per frame. ``--repo`` measures another checkout (e.g. a ``git worktree`` of the commit
before issue 11, whose modules had other names) so two versions can run back to back.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def _load(repo: Path) -> tuple[Any, Any, Any]:
    """(Detector, DetectParams, per-frame message builder+encoder) of the checkout ``repo``."""
    sys.path.insert(0, str(repo))
    from edged import sidecar
    from edged.models import DEFAULT_MODEL

    try:  # the layered package (issue 11 on)
        from edged.api.messages import DetMessage, FrameSize, Latency, detections_of, encode
        from edged.engine.detector import Detector, DetectParams

        def message(dets: Any, labels: Any, w: int, h: int, lat: dict[str, float]) -> bytes:
            return encode(DetMessage("bench", 0, 0, time.time_ns(), FrameSize(w, h), "m",
                                     "cpu", Latency(**lat), detections_of(dets, labels, w, h)))
    except ImportError:  # before: dicts built on the inference thread
        from edged.inference.detector import Detector, DetectParams  # type: ignore
        from edged.messages import det_message, detection_dicts  # type: ignore
        from edged.messages import encode as encode_dict  # type: ignore

        def message(dets: Any, labels: Any, w: int, h: int, lat: dict[str, float]) -> bytes:
            return encode_dict(det_message(  # type: ignore[no-any-return]
                camera="bench", seq=0, frame_seq=0, ts_ns=time.time_ns(), width=w, height=h,
                model="m", backend="cpu", latency_ms=lat,
                detections=detection_dicts(dets, labels, w, h)))

    spec = sidecar.load(DEFAULT_MODEL)
    return Detector(spec, spec.variant_path("cpu"), 2), DetectParams(), message


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    det, params, message = _load(args.repo.resolve())
    from edged.media import SAMPLE_CLIP

    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames: list[np.ndarray] = []
    while len(frames) < args.frames:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        frames.append(frame)
    labels = det.spec.labels
    lat = {"preprocess": 1.0, "inference": 1.0, "postprocess": 1.0, "total": 3.0}

    def edged_loop() -> None:
        for f in frames:
            t0 = time.perf_counter()
            geom = det.preprocess(f)
            det.invoke()
            dets = det.postprocess(geom, params)
            lat["total"] = (time.perf_counter() - t0) * 1e3
            message(dets, labels, f.shape[1], f.shape[0], lat)

    def bare_loop() -> None:
        for _ in frames:
            det.invoke()

    figures: dict[str, list[float]] = {"edged": [], "bare": []}
    edged_loop()  # warm-up
    for _ in range(args.rounds):
        for name, loop in (("edged", edged_loop), ("bare", bare_loop)):
            cpu0 = time.process_time()
            loop()
            figures[name].append((time.process_time() - cpu0) / len(frames) * 1e3)
    e, b = statistics.median(figures["edged"]), statistics.median(figures["bare"])
    print(f"{args.repo}: CPU ms per frame (median of {args.rounds} rounds of {len(frames)} "
          f"frames): edged loop {e:.3f}, bare invoke {b:.3f}, edged minus bare {e - b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
