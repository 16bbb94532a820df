"""Frame in, detections out: preprocess, invoke, decode heads, NMS, map back to the frame.

Head tensors are matched to the sidecar's outputs by their grid shape, never by output order.

The hot path copies as little as the runtime allows: the letterbox is written straight into the
interpreter's input tensor (or, for inputs that are not raw pixels, converted into it through a
256-entry table), and the heads are decoded from views of the output tensors. A view of the
interpreter's memory must not outlive the call that made it: the runtime refuses to invoke (or
reallocate) while one exists, so only the view *functions* (``interpreter.tensor(i)``) are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged import sidecar
from edged.config import DetectionConfig, InferenceConfig
from edged.core.decode import Quant, decode_anchor_free, decode_region, decode_yolo
from edged.core.nms import nms, select
from edged.core.preprocess import Letterbox, letterbox_into
from edged.core.types import Detections
from edged.engine.runtime import Runtime, load_runtime, make_interpreter
from edged.errors import ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectParams:
    """The ``detection`` settings with labels turned into class ids (defaults: edged.config)."""

    conf_threshold: float = DetectionConfig.conf_threshold  # default minimum score
    iou_threshold: float = DetectionConfig.iou_threshold
    max_detections: int = DetectionConfig.max_detections
    class_thresholds: Mapping[int, float] = field(default_factory=dict)  # class id -> min score
    allowed_classes: frozenset[int] | None = None  # None: every class
    min_box_area: float = DetectionConfig.min_box_area  # in source-frame pixels^2


Decoder = Callable[[np.ndarray, float], Detections]  # (head tensor, conf threshold) -> candidates


@dataclass(frozen=True)
class _Filter:
    """DetectParams as the hot path uses them, built once per params (not per frame)."""

    conf: float  # the lowest threshold of any class: what the decoders keep
    thresholds: np.ndarray | None  # (classes,) float32 min score per class
    allowed: np.ndarray | None  # (classes,) bool
    per_class: bool  # thresholds, allowed classes or a minimum box area to apply


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

    def __init__(self, spec: sidecar.ModelSpec, model_path: Path,
                 num_threads: int = InferenceConfig.threads,
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
        # Inputs that are not the raw pixels: uint8 pixel -> input value, through one table
        # computed with the same float32 arithmetic a whole frame used to go through.
        self._lut = None if self._raw_pixels_in else self._input_table()
        self._outputs = self._match_outputs()
        interp = self.interpreter
        self._input_view: Callable[[], np.ndarray] = interp.tensor(int(self._in["index"]))
        # The decoder of each head, chosen once: (output view function, decoder).
        self._heads: list[tuple[Callable[[], np.ndarray], Decoder]] = [
            (interp.tensor(o.index), self._decoder(o)) for o in self._outputs]
        self._filter: tuple[DetectParams, _Filter] | None = None

    def _input_table(self) -> np.ndarray:
        """(256,) of the input dtype: the network's input value for each pixel value."""
        v = np.arange(256, dtype=np.uint8).astype(np.float32)
        if self._in_dtype == np.float32:
            scaled: np.ndarray = v * np.float32(1 / 255)
            return scaled
        # quantized input with other parameters (e.g. int8): quantize x/255
        scale, zp = self._in_quant or (1 / 255, 0)
        q = np.round(v / (255 * scale)) + zp
        info = np.iinfo(self._in_dtype)
        table: np.ndarray = np.clip(q, info.min, info.max).astype(self._in_dtype)
        return table

    def _decoder(self, out: _Output) -> Decoder:
        head, wh = self.spec.head, self.input_size
        if head.type == "yolo":
            return partial(_call_yolo, anchors=out.anchors, input_wh=wh,
                           scale_x_y=out.spec.scale_x_y, quant=out.quant)
        if head.type == "region":
            return partial(_call_region, anchors=out.anchors, input_wh=wh, quant=out.quant,
                           grid=out.spec.grid)
        return partial(_call_anchor_free, classes=head.classes, input_wh=wh, quant=out.quant)

    def close(self) -> None:
        """Drop the interpreter (and with it the delegate and its buffers). The detector is
        unusable afterwards; the worker closes a replaced engine only after its last frame."""
        self.interpreter = None
        self._heads = []  # the view functions hold the interpreter too
        self._input_view = _closed

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
        """The last letterboxed frame, (net_h, net_w, 3) uint8 in the network's colour order
        (a copy when the input tensor holds the pixels themselves)."""
        if self._lut is None:
            pixels: np.ndarray = self._input_view()[0].copy()
            return pixels
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
        tensor = self._input_view()[0]  # (H, W, C): released when this call returns
        if self._lut is None:  # raw pixels: the letterbox is written into the tensor itself
            return letterbox_into(frame_bgr, tensor, s.pad_value, swap_rb=s.color == "RGB",
                                  stretch=s.resize == "stretch")
        geom = letterbox_into(frame_bgr, self._pixels, s.pad_value, swap_rb=s.color == "RGB",
                              stretch=s.resize == "stretch")
        if cv2.LUT(self._pixels, self._lut, dst=tensor) is not tensor:  # OpenCV reallocated
            tensor[...] = cv2.LUT(self._pixels, self._lut)
        return geom

    def invoke(self) -> None:
        self.interpreter.invoke()

    def postprocess(self, geom: Letterbox, params: DetectParams) -> Detections:
        """Decode every head, filter, NMS, and map boxes to the source frame (clipped).

        Reads the output tensors in place: call it after invoke() and before the next one."""
        f = self._filter_for(params)
        parts = [decode(view(), f.conf) for view, decode in self._heads]
        dets = Detections.concat(parts) if len(parts) > 1 else parts[0]
        if len(dets) and f.per_class:
            dets = dets.take(select(dets.boxes, dets.scores, dets.class_ids, f.thresholds,
                                    f.allowed,
                                    params.min_box_area * geom.scale_x * geom.scale_y))
        head = self.spec.head
        keep = nms(dets.boxes, dets.scores, dets.class_ids, params.iou_threshold,
                   params.max_detections, head.nms, head.nms_beta)
        dets = dets.take(keep)
        return Detections(geom.to_source(dets.boxes), dets.scores, dets.class_ids)

    def _filter_for(self, params: DetectParams) -> _Filter:
        """``params`` as arrays, built again only when they change (a reload)."""
        cached = self._filter
        if cached is not None and (cached[0] is params or cached[0] == params):
            return cached[1]
        conf = params.conf_threshold
        if params.class_thresholds:
            conf = min(conf, *params.class_thresholds.values())
        f = _Filter(conf, self._thresholds(params), self._allowed(params),
                    bool(params.class_thresholds or params.allowed_classes is not None
                         or params.min_box_area > 0))
        self._filter = (params, f)
        return f

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


def _closed() -> np.ndarray:
    raise RuntimeError("the detector was closed")


# The decoders with their arguments in the order functools.partial binds them (per head, once).
def _call_yolo(raw: np.ndarray, conf: float, *, anchors: np.ndarray, input_wh: tuple[int, int],
               scale_x_y: float, quant: Quant | None) -> Detections:
    return decode_yolo(raw, anchors, input_wh, conf, scale_x_y, quant)


def _call_region(raw: np.ndarray, conf: float, *, anchors: np.ndarray,
                 input_wh: tuple[int, int], quant: Quant | None,
                 grid: tuple[int, int]) -> Detections:
    return decode_region(raw, anchors, input_wh, conf, quant, grid)


def _call_anchor_free(raw: np.ndarray, conf: float, *, classes: int, input_wh: tuple[int, int],
                      quant: Quant | None) -> Detections:
    return decode_anchor_free(raw, classes, input_wh, conf, quant)
