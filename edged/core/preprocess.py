"""Frame → network input. Pure functions on arrays; no I/O, no clocks.

Box convention across edged: ``xyxy`` float32, pixels. ``Letterbox`` maps between the
network input (``net`` pixels) and the original frame (``src`` pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Geometry of a letterbox (or stretch) resize from ``src`` to ``net`` pixels."""

    src_w: int
    src_h: int
    scale_x: float  # net pixels per source pixel
    scale_y: float
    pad_x: int  # left border in net pixels
    pad_y: int  # top border in net pixels
    new_w: int  # size of the resized image inside the net input
    new_h: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(N, 4)`` xyxy boxes from net pixels to source pixels, clipped to the frame."""
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) xyxy, got {boxes.shape}")
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0, self.src_w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.src_h, out=out[:, 1::2])
        return out


def letterbox_geometry(src_w: int, src_h: int, net_w: int, net_h: int,
                       stretch: bool = False) -> Letterbox:
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"empty frame {src_w}x{src_h}")
    if stretch:
        return Letterbox(src_w, src_h, net_w / src_w, net_h / src_h, 0, 0, net_w, net_h)
    scale = min(net_w / src_w, net_h / src_h)
    new_w = max(1, min(net_w, round(src_w * scale)))
    new_h = max(1, min(net_h, round(src_h * scale)))
    pad_x, pad_y = (net_w - new_w) // 2, (net_h - new_h) // 2
    return Letterbox(src_w, src_h, new_w / src_w, new_h / src_h, pad_x, pad_y, new_w, new_h)


def letterbox_into(frame: np.ndarray, out: np.ndarray, pad_value: int,
                   swap_rb: bool, stretch: bool = False) -> Letterbox:
    """Resize ``frame`` (H, W, 3) uint8 into ``out`` (net_h, net_w, 3) uint8, in place.

    ``swap_rb`` converts BGR (OpenCV's order) to RGB. The border is filled with ``pad_value``.
    Bilinear resize, as darknet's letterbox does. ``out`` may be a view (an interpreter's input
    tensor): the resized image is written into it directly, without an intermediate copy.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    if out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8:
        raise ValueError(f"out must be (H, W, 3) uint8, got {out.shape} {out.dtype}")
    net_h, net_w = out.shape[:2]
    g = letterbox_geometry(frame.shape[1], frame.shape[0], net_w, net_h, stretch)
    if g.new_w != net_w or g.new_h != net_h:
        out[: g.pad_y] = pad_value
        out[g.pad_y + g.new_h:] = pad_value
        out[:, : g.pad_x] = pad_value
        out[:, g.pad_x + g.new_w:] = pad_value
    roi = out[g.pad_y:g.pad_y + g.new_h, g.pad_x:g.pad_x + g.new_w]
    if swap_rb:  # the colour conversion is the pass that writes the result into place
        resized = cv2.resize(frame, (g.new_w, g.new_h), interpolation=cv2.INTER_LINEAR)
        written = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=roi)
    else:
        written = cv2.resize(frame, (g.new_w, g.new_h), dst=roi, interpolation=cv2.INTER_LINEAR)
    if written is not roi:  # OpenCV could not use the view (it never happens for uint8 HWC)
        roi[...] = written
    return g


def letterbox(frame: np.ndarray, net_w: int, net_h: int, pad_value: int,
              swap_rb: bool, stretch: bool = False) -> tuple[np.ndarray, Letterbox]:
    """Allocating convenience wrapper around :func:`letterbox_into`."""
    out = np.empty((net_h, net_w, 3), np.uint8)
    return out, letterbox_into(frame, out, pad_value, swap_rb, stretch)
