"""Frame in, detections out: preprocess, invoke, decode heads, NMS, map back to the frame.

Head tensors are matched to the sidecar's outputs by their grid shape, never by output order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged import sidecar
from edged.decode import Quant, decode_region, decode_yolo
from edged.errors import ModelError
from edged.inference.runtime import Runtime, load_runtime, make_interpreter
from edged.nms import nms
from edged.preprocess import Letterbox, letterbox_into
from edged.types import Detections

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectParams:
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100


@dataclass(frozen=True)
class _Output:
    index: int  # tensor index in the interpreter
    spec: sidecar.HeadOutput
    quant: Quant | None
    anchors: np.ndarray


class Detector:
    """One TFLite model plus its sidecar, with a preallocated input buffer.

    Not thread-safe: one Detector per inference thread.
    """

    def __init__(self, spec: sidecar.ModelSpec, model_path: Path, num_threads: int = 2,
                 runtime: Runtime | None = None, delegates: list[Any] | None = None) -> None:
        self.spec = spec
        self.model_path = model_path
        self.runtime = runtime or load_runtime()
        self.interpreter = make_interpreter(self.runtime, model_path, num_threads, delegates)
        inp = self.interpreter.get_input_details()
        if len(inp) != 1:
            raise ModelError(f"{model_path}: expected 1 input tensor, found {len(inp)}")
        self._in = inp[0]
        want = (1, spec.input.height, spec.input.width, spec.input.channels)
        if tuple(int(v) for v in self._in["shape"]) != want:
            raise ModelError(
                f"{model_path}: input shape {tuple(self._in['shape'])} does not fit the sidecar "
                f"{want} (input.width/height/channels)")
        self._in_dtype = np.dtype(self._in["dtype"])
        scale, zp = self._in["quantization"]
        self._in_quant = (float(scale), int(zp)) if scale else None
        # uint8 input with scale 1/255 (what `edged export` writes) takes the pixels as they are.
        self._raw_pixels_in = self._in_dtype == np.uint8 and (
            self._in_quant is None
            or (abs(self._in_quant[0] * 255 - 1) < 1e-6 and self._in_quant[1] == 0))
        self._pixels = np.empty((spec.input.height, spec.input.width, 3), np.uint8)
        self._outputs = self._match_outputs()

    def _match_outputs(self) -> list[_Output]:
        head = self.spec.head
        details = self.interpreter.get_output_details()
        by_grid: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for d in details:
            shape = tuple(int(v) for v in d["shape"])
            if len(shape) == 4:
                by_grid.setdefault((shape[1], shape[2]), []).append(d)
        matched = []
        anchors = np.asarray(head.anchors, np.float32).reshape(-1, 2)
        for i, out in enumerate(head.outputs):
            cands = by_grid.get(out.grid, [])
            n_a = len(out.mask) if out.mask else len(anchors)
            want_c = n_a * (head.classes + 5)
            cands = [d for d in cands if int(d["shape"][3]) == want_c]
            if len(cands) != 1:
                shapes = [tuple(int(v) for v in d["shape"]) for d in details]
                raise ModelError(
                    f"{self.model_path}: model outputs {shapes} do not fit the sidecar: "
                    f"head.outputs[{i}] expects (1, {out.grid[0]}, {out.grid[1]}, {want_c})")
            d = cands[0]
            scale, zp = d["quantization"]
            quant = (float(scale), int(zp)) if scale else None
            a = anchors[list(out.mask)] if out.mask else anchors
            matched.append(_Output(int(d["index"]), out, quant, a))
        return matched

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input.width, self.spec.input.height

    def preprocess(self, frame_bgr: np.ndarray) -> Letterbox:
        """Letterbox ``frame_bgr`` into the interpreter's input tensor."""
        s = self.spec.input
        geom = letterbox_into(frame_bgr, self._pixels, s.pad_value, swap_rb=s.color == "RGB",
                              stretch=s.resize == "stretch")
        if self._raw_pixels_in:
            tensor = self._pixels
        elif self._in_dtype == np.float32:
            tensor = self._pixels.astype(np.float32) * np.float32(1 / 255)
        else:  # quantized input with other parameters (e.g. int8): quantize x/255
            scale, zp = self._in_quant or (1 / 255, 0)
            q = np.round(self._pixels.astype(np.float32) / (255 * scale)) + zp
            info = np.iinfo(self._in_dtype)
            tensor = np.clip(q, info.min, info.max).astype(self._in_dtype)
        self.interpreter.set_tensor(self._in["index"], tensor[None])
        return geom

    def invoke(self) -> None:
        self.interpreter.invoke()

    def postprocess(self, geom: Letterbox, params: DetectParams) -> Detections:
        """Decode every head, NMS, and map boxes to the source frame (clipped)."""
        head = self.spec.head
        parts = []
        for out in self._outputs:
            raw = self.interpreter.get_tensor(out.index)
            if head.type == "yolo":
                parts.append(decode_yolo(raw, out.anchors, self.input_size,
                                         params.conf_threshold, out.spec.scale_x_y, out.quant))
            elif head.type == "region":
                parts.append(decode_region(raw, out.anchors, self.input_size,
                                           params.conf_threshold, out.quant))
            else:
                raise ModelError(f"head type {head.type!r} is not supported by this detector")
        dets = Detections.concat(parts)
        keep = nms(dets.boxes, dets.scores, dets.class_ids, params.iou_threshold,
                   params.max_detections, head.nms, head.nms_beta)
        dets = dets.take(keep)
        return Detections(geom.to_source(dets.boxes), dets.scores, dets.class_ids)

    def detect(self, frame_bgr: np.ndarray, params: DetectParams) -> Detections:
        geom = self.preprocess(frame_bgr)
        self.invoke()
        return self.postprocess(geom, params)


def open_detector(sidecar_path: Path, variant: str = "cpu", num_threads: int = 2,
                  runtime: Runtime | None = None) -> Detector:
    spec = sidecar.load(sidecar_path)
    path = spec.variant_path(variant)
    if path is None:
        raise ModelError(
            f"{sidecar_path}: no '{variant}' variant (variants: {sorted(spec.variants)})")
    return Detector(spec, path, num_threads, runtime)
