"""Frame in, detections out: preprocess, invoke, decode heads, NMS, map back to the frame.

Head tensors are matched to the sidecar's outputs by their grid shape, never by output order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged import sidecar
from edged.core.decode import Quant, decode_anchor_free, decode_region, decode_yolo
from edged.core.nms import nms, select
from edged.core.preprocess import Letterbox, letterbox_into
from edged.core.types import Detections
from edged.engine.runtime import Runtime, load_runtime, make_interpreter
from edged.errors import ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectParams:
    conf_threshold: float = 0.25  # default minimum score
    iou_threshold: float = 0.45
    max_detections: int = 100
    class_thresholds: Mapping[int, float] = field(default_factory=dict)  # class id -> min score
    allowed_classes: frozenset[int] | None = None  # None: every class
    min_box_area: float = 0.0  # in source-frame pixels^2


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

    def close(self) -> None:
        """Drop the interpreter (and with it the delegate and its buffers). The detector is
        unusable afterwards; the worker closes a replaced engine only after its last frame."""
        self.interpreter = None

    def _match_outputs(self) -> list[_Output]:
        """Pair each sidecar output with the one tensor of a fitting shape (order ignored)."""
        head = self.spec.head
        details = self.interpreter.get_output_details()
        shapes = [tuple(int(v) for v in d["shape"]) for d in details]
        anchors = np.asarray(head.anchors, np.float32).reshape(-1, 2)
        wanted: list[tuple[sidecar.HeadOutput | None, set[tuple[int, ...]], np.ndarray]] = []
        if head.type == "anchor_free":
            n = sum(o.grid[0] * o.grid[1] for o in head.outputs)
            c = 4 + head.classes
            wanted.append((None, {(1, c, n), (1, n, c)}, anchors))
        else:
            for o in head.outputs:
                a = anchors[list(o.mask)] if o.mask else anchors
                c = len(a) * (head.classes + 5)
                gh, gw = o.grid
                shapes_ok: set[tuple[int, ...]] = {(1, gh, gw, c)}
                if head.type == "region":
                    shapes_ok.add((1, gh * gw, c))  # ST's flattened layout
                wanted.append((o, shapes_ok, a))
        matched = []
        for i, (out, ok, a) in enumerate(wanted):
            hits = [d for d, sh in zip(details, shapes, strict=True) if sh in ok]
            if len(hits) != 1:
                raise ModelError(
                    f"{self.model_path}: model outputs {shapes} do not fit the sidecar: "
                    f"head.outputs[{i}] ({head.type}) expects one of {sorted(ok)}")
            d = hits[0]
            scale, zp = d["quantization"]
            quant = (float(scale), int(zp)) if scale else None
            spec_out = out or head.outputs[0]
            matched.append(_Output(int(d["index"]), spec_out, quant, a))
        return matched

    @property
    def pixels(self) -> np.ndarray:
        """The last letterboxed frame, (net_h, net_w, 3) uint8 in the network's colour order."""
        return self._pixels

    @property
    def outputs(self) -> list[_Output]:
        """Head tensors matched to the sidecar's outputs (index, spec, quantization, anchors)."""
        return self._outputs

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
        """Decode every head, filter, NMS, and map boxes to the source frame (clipped)."""
        head = self.spec.head
        conf = params.conf_threshold
        if params.class_thresholds:
            conf = min(conf, *params.class_thresholds.values())
        parts = []
        for out in self._outputs:
            raw = self.interpreter.get_tensor(out.index)
            if head.type == "yolo":
                parts.append(decode_yolo(raw, out.anchors, self.input_size, conf,
                                         out.spec.scale_x_y, out.quant))
            elif head.type == "region":
                parts.append(decode_region(raw, out.anchors, self.input_size, conf, out.quant,
                                           out.spec.grid))
            else:
                parts.append(decode_anchor_free(raw, head.classes, self.input_size, conf,
                                                out.quant))
        dets = Detections.concat(parts) if len(parts) > 1 else parts[0]
        if len(dets) and (params.class_thresholds or params.allowed_classes is not None
                          or params.min_box_area > 0):
            dets = dets.take(select(dets.boxes, dets.scores, dets.class_ids,
                                    self._thresholds(params), self._allowed(params),
                                    params.min_box_area * geom.scale_x * geom.scale_y))
        keep = nms(dets.boxes, dets.scores, dets.class_ids, params.iou_threshold,
                   params.max_detections, head.nms, head.nms_beta)
        dets = dets.take(keep)
        return Detections(geom.to_source(dets.boxes), dets.scores, dets.class_ids)

    def _thresholds(self, params: DetectParams) -> np.ndarray | None:
        if not params.class_thresholds:
            return None
        t = np.full(self.spec.head.classes, params.conf_threshold, np.float32)
        for cls, v in params.class_thresholds.items():
            t[cls] = v
        return t

    def _allowed(self, params: DetectParams) -> np.ndarray | None:
        if params.allowed_classes is None:
            return None
        mask = np.zeros(self.spec.head.classes, bool)
        mask[list(params.allowed_classes)] = True
        return mask

    def detect(self, frame_bgr: np.ndarray, params: DetectParams) -> Detections:
        geom = self.preprocess(frame_bgr)
        self.invoke()
        return self.postprocess(geom, params)

