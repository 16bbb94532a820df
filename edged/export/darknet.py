"""Darknet ``.cfg`` and ``.weights`` reader: pure Python and numpy, no framework.

``parse_cfg`` turns a cfg into a list of resolved layers with their output shapes
(``(height, width, channels)``, batch 1, NHWC); ``read_weights`` reads the matching weights
file into convolution kernels in TensorFlow layout with batch norm folded in.

Every error names the cfg line (or, for weights, the layer and its cfg line) and says what to do.
Supported: ``[net]``, ``[convolutional]``, ``[maxpool]``, ``[route]`` (incl.
``groups``/``group_id``), ``[upsample]``, ``[shortcut]``, ``[yolo]`` and ``[region]``:
everything the tiny YOLO v2/v3/v4 cfgs use.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from edged.errors import DarknetError
from edged.yamlfile import read_text, show

# A cfg is text of a few KB (yolov4.cfg: 12 KB); weights above 2 GiB cannot become a TFLite
# file (its flatbuffer limit).
MAX_CFG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 1 << 31

# BatchNorm epsilon as darknet (AlexeyAB) and OpenCV's darknet importer apply it:
# (x - mean) / sqrt(var + 1e-6).
BN_EPS = 1e-6

Shape = tuple[int, int, int]  # (height, width, channels)
T = TypeVar("T")

_SECTION_ALIASES = {
    "net": "net",
    "network": "net",
    "convolutional": "convolutional",
    "conv": "convolutional",
    "maxpool": "maxpool",
    "max": "maxpool",
    "route": "route",
    "upsample": "upsample",
    "shortcut": "shortcut",
    "yolo": "yolo",
    "region": "region",
}
_ACTIVATIONS = ("leaky", "linear", "relu", "logistic")


@dataclass(frozen=True)
class CfgSection:
    """One ``[kind]`` block of a cfg file, with the line its header is on."""

    kind: str
    line: int
    options: Mapping[str, str]
    source: str

    def where(self) -> str:
        return f"{self.source}:{self.line} [{_clip(self.kind)}]"

    def _get(self, key: str, parse: Callable[[str], T], what: str, default: T | None) -> T:
        raw = self.options.get(key)
        if raw is None:
            if default is None:
                raise DarknetError(f"{self.where()}: missing key '{key}' (add '{key}=<{what}>')")
            return default
        try:
            return parse(raw)
        except ValueError:
            raise DarknetError(
                f"{self.where()}: '{key}' must be {what}, got {show(raw)}"
            ) from None

    def get_int(self, key: str, default: int | None = None) -> int:
        return self._get(key, int, "an integer", default)

    def get_float(self, key: str, default: float | None = None) -> float:
        return self._get(key, float, "a number", default)

    def get_str(self, key: str, default: str | None = None) -> str:
        return self._get(key, lambda s: s, "a string", default)

    def get_ints(self, key: str, default: tuple[int, ...] | None = None) -> tuple[int, ...]:
        return self._get(key, lambda s: tuple(int(v) for v in _split_list(s)),
                         "a comma-separated list of integers", default)

    def get_floats(self, key: str, default: tuple[float, ...] | None = None) -> tuple[float, ...]:
        return self._get(key, lambda s: tuple(float(v) for v in _split_list(s)),
                         "a comma-separated list of numbers", default)


def _clip(text: str) -> str:
    """``text`` for an error message: bounded, non-printables escaped, no quotes added."""
    return show(text)[1:-1]


def _split_list(raw: str) -> list[str]:
    items = [v.strip() for v in raw.split(",")]
    items = [v for v in items if v]
    if not items:
        raise ValueError(raw)
    return items


def parse_cfg_sections(text: str, source: str = "cfg") -> list[CfgSection]:
    """Split cfg text into sections. Comments (``#``, ``;``) and blank lines are ignored."""
    sections: list[CfgSection] = []
    current: dict[str, str] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise DarknetError(f"{source}:{lineno}: malformed section header {show(line)}")
            current = {}
            sections.append(CfgSection(line[1:-1].strip().lower(), lineno, current, source))
            continue
        if current is None:
            raise DarknetError(f"{source}:{lineno}: {show(line)} comes before any [section]")
        if "=" not in line:
            raise DarknetError(f"{source}:{lineno}: expected 'key=value', got {show(line)}")
        key, value = line.split("=", 1)
        current[key.strip()] = re.sub(r"\s+", "", value)
    if not sections:
        raise DarknetError(f"{source}: no sections found; is this a darknet .cfg file?")
    return sections


# --- resolved layers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    index: int
    line: int
    in_shape: Shape
    out_shape: Shape

    kind = "layer"

    def where(self, source: str = "cfg") -> str:
        return f"layer {self.index} ({self.kind}, {source} line {self.line})"


@dataclass(frozen=True)
class Conv(Layer):
    filters: int
    size: int
    stride: int
    pad: tuple[int, int, int, int]  # top, bottom, left, right (bottom/right may be < top/left)
    batch_normalize: bool
    activation: str
    kind = "convolutional"

    @property
    def n_params(self) -> int:
        """Number of float32 values this layer reads from a .weights file."""
        n = self.filters  # biases
        if self.batch_normalize:
            n += 3 * self.filters  # scales, rolling mean, rolling variance
        return n + self.filters * self.in_shape[2] * self.size * self.size


@dataclass(frozen=True)
class MaxPool(Layer):
    size: int
    stride: int
    pad: tuple[int, int, int, int]
    kind = "maxpool"


@dataclass(frozen=True)
class Route(Layer):
    sources: tuple[int, ...]  # absolute layer indices
    groups: int
    group_id: int
    kind = "route"


@dataclass(frozen=True)
class Upsample(Layer):
    stride: int
    kind = "upsample"


@dataclass(frozen=True)
class Shortcut(Layer):
    source: int
    activation: str
    kind = "shortcut"


@dataclass(frozen=True)
class Yolo(Layer):
    """A ``[yolo]`` head (v3/v4): decoded on the CPU from the raw tensor of ``in_layer``."""

    in_layer: int
    classes: int
    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]  # all anchors, pixels of the network input
    scale_x_y: float
    nms_kind: str
    beta_nms: float
    kind = "yolo"


@dataclass(frozen=True)
class Region(Layer):
    """A ``[region]`` head (Tiny YOLOv2): anchors in grid cells, softmax over classes."""

    in_layer: int
    classes: int
    num: int
    coords: int
    anchors: tuple[tuple[float, float], ...]
    softmax: bool
    kind = "region"


Head = Yolo | Region


@dataclass(frozen=True)
class DarknetNet:
    width: int
    height: int
    channels: int
    layers: tuple[Layer, ...]
    source: str = "cfg"
    heads: tuple[Head, ...] = field(init=False)

    def __post_init__(self) -> None:
        heads = tuple(x for x in self.layers if isinstance(x, Yolo | Region))
        object.__setattr__(self, "heads", heads)

    @property
    def convs(self) -> tuple[Conv, ...]:
        return tuple(x for x in self.layers if isinstance(x, Conv))

    @property
    def classes(self) -> int:
        return self.heads[0].classes


def parse_cfg(path: str | Path) -> DarknetNet:
    p = Path(path)
    text = read_text(p, MAX_CFG_BYTES, "cfg", DarknetError)
    return build_net(parse_cfg_sections(text, source=p.name))


def _darknet_same_pad(size: int, stride: int, padding: int, h: int) -> tuple[int, int, int]:
    """Output size and (before, after) padding along one axis, darknet style."""
    out = (h + 2 * padding - size) // stride + 1
    after = max((out - 1) * stride + size - h - padding, 0)
    return out, padding, after


def build_net(sections: Sequence[CfgSection]) -> DarknetNet:
    """Resolve cfg sections into layers with shapes; reject what we cannot export exactly."""
    if sections[0].kind not in ("net", "network"):
        raise DarknetError(f"{sections[0].where()}: the first section must be [net]")
    net = sections[0]
    source = net.source
    width, height = net.get_int("width"), net.get_int("height")
    channels = net.get_int("channels", 3)
    if width <= 0 or height <= 0 or channels not in (1, 3):
        raise DarknetError(
            f"{net.where()}: width/height must be > 0 and channels 1 or 3, "
            f"got {width}x{height}x{channels}"
        )
    layers: list[Layer] = []
    shape: Shape = (height, width, channels)

    def resolve(ref: int, sec: CfgSection, idx: int) -> int:
        target = idx + ref if ref < 0 else ref
        if not 0 <= target < idx:
            raise DarknetError(f"{sec.where()}: layer reference {ref} points outside 0..{idx - 1}")
        if isinstance(layers[target], Yolo | Region):
            raise DarknetError(
                f"{sec.where()}: routing from a detection head (layer {target}) is not supported"
            )
        return target

    for idx, sec in enumerate(sections[1:]):
        kind = _SECTION_ALIASES.get(sec.kind)
        if kind is None:
            supported = ", ".join(sorted(set(_SECTION_ALIASES.values()) - {"net"}))
            raise DarknetError(
                f"{sec.where()}: unsupported layer type [{_clip(sec.kind)}] "
                f"(supported: {supported})"
            )
        if kind == "net":
            raise DarknetError(f"{sec.where()}: a second [net] section")
        in_shape = shape
        h, w, c = in_shape
        layer: Layer
        if kind == "convolutional":
            filters = sec.get_int("filters")
            size, stride = sec.get_int("size", 1), sec.get_int("stride", 1)
            if filters <= 0 or size <= 0 or stride <= 0:
                raise DarknetError(f"{sec.where()}: filters, size and stride must be > 0")
            if sec.get_int("groups", 1) != 1:
                raise DarknetError(f"{sec.where()}: grouped convolution (groups=) is not supported")
            if {sec.get_int("stride_x", stride), sec.get_int("stride_y", stride)} != {stride}:
                raise DarknetError(f"{sec.where()}: different stride_x/stride_y not supported")
            if sec.get_int("dilation", 1) != 1:
                raise DarknetError(f"{sec.where()}: dilated convolution is not supported")
            padding = size // 2 if sec.get_int("pad", 0) else sec.get_int("padding", 0)
            act = sec.get_str("activation", "logistic")
            if act not in _ACTIVATIONS:
                raise DarknetError(
                    f"{sec.where()}: activation {show(act)} not supported "
                    f"(supported: {', '.join(_ACTIVATIONS)})"
                )
            oh, top, bottom = _darknet_same_pad(size, stride, padding, h)
            ow, left, right = _darknet_same_pad(size, stride, padding, w)
            if oh <= 0 or ow <= 0:
                raise DarknetError(f"{sec.where()}: input {h}x{w} is too small for size={size}")
            layer = Conv(idx, sec.line, in_shape, (oh, ow, filters), filters, size, stride,
                         (top, bottom, left, right), bool(sec.get_int("batch_normalize", 0)), act)
        elif kind == "maxpool":
            stride = sec.get_int("stride", 1)
            size = sec.get_int("size", stride)
            padding = sec.get_int("padding", size - 1)
            if size <= 0 or stride <= 0 or padding < 0:
                raise DarknetError(f"{sec.where()}: size and stride must be > 0")
            if sec.get_int("maxpool_depth", 0) or sec.get_int("stride_x", stride) != stride:
                raise DarknetError(f"{sec.where()}: maxpool_depth/stride_x are not supported")
            oh = (h + padding - size) // stride + 1
            ow = (w + padding - size) // stride + 1
            before = padding // 2
            pad = (before, max((oh - 1) * stride + size - h - before, 0),
                   before, max((ow - 1) * stride + size - w - before, 0))
            layer = MaxPool(idx, sec.line, in_shape, (oh, ow, c), size, stride, pad)
        elif kind == "route":
            srcs = tuple(resolve(r, sec, idx) for r in sec.get_ints("layers"))
            groups, group_id = sec.get_int("groups", 1), sec.get_int("group_id", 0)
            if groups <= 0 or not 0 <= group_id < groups:
                raise DarknetError(f"{sec.where()}: need groups >= 1 and 0 <= group_id < groups")
            shapes = [layers[s].out_shape for s in srcs]
            if len({s[:2] for s in shapes}) != 1:
                raise DarknetError(
                    f"{sec.where()}: routed layers {list(srcs)} have different sizes "
                    f"{[s[:2] for s in shapes]}"
                )
            for s, sh in zip(srcs, shapes, strict=True):
                if sh[2] % groups:
                    raise DarknetError(
                        f"{sec.where()}: layer {s} has {sh[2]} channels, not divisible by "
                        f"groups={groups}"
                    )
            out_c = sum(sh[2] // groups for sh in shapes)
            layer = Route(idx, sec.line, in_shape, (shapes[0][0], shapes[0][1], out_c),
                          srcs, groups, group_id)
        elif kind == "upsample":
            stride = sec.get_int("stride", 2)
            if stride < 1:
                raise DarknetError(f"{sec.where()}: only stride >= 1 (upsampling) is supported")
            if sec.get_float("scale", 1.0) != 1.0:
                raise DarknetError(f"{sec.where()}: upsample scale= is not supported")
            layer = Upsample(idx, sec.line, in_shape, (h * stride, w * stride, c), stride)
        elif kind == "shortcut":
            src = resolve(sec.get_ints("from")[0], sec, idx)
            if len(sec.get_ints("from")) != 1:
                raise DarknetError(f"{sec.where()}: shortcut from several layers not supported")
            if layers[src].out_shape != in_shape:
                raise DarknetError(
                    f"{sec.where()}: shortcut adds layer {src} {layers[src].out_shape} "
                    f"to {in_shape}; only equal shapes are supported"
                )
            act = sec.get_str("activation", "linear")
            if act not in _ACTIVATIONS:
                raise DarknetError(f"{sec.where()}: activation {show(act)} not supported")
            if "weights_type" in sec.options:
                raise DarknetError(f"{sec.where()}: weighted shortcut is not supported")
            layer = Shortcut(idx, sec.line, in_shape, in_shape, src, act)
        elif kind == "yolo":
            layer = _yolo(sec, idx, in_shape, layers)
        else:  # region
            layer = _region(sec, idx, in_shape, layers)
        layers.append(layer)
        shape = layer.out_shape
    result = DarknetNet(width, height, channels, tuple(layers), source)
    if not result.heads:
        raise DarknetError(f"{source}: no [yolo] or [region] layer; nothing to detect with")
    kinds = {type(hd) for hd in result.heads}
    if len(kinds) > 1 or len({hd.classes for hd in result.heads}) > 1:
        raise DarknetError(f"{source}: all detection heads must be of one type and class count")
    return result


def _head_input(sec: CfgSection, idx: int, layers: list[Layer]) -> Conv:
    if idx == 0 or not isinstance(layers[idx - 1], Conv):
        raise DarknetError(f"{sec.where()}: a detection head must follow a [convolutional] layer")
    prev = layers[idx - 1]
    assert isinstance(prev, Conv)
    return prev


def _pairs(sec: CfgSection, values: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    if len(values) % 2:
        raise DarknetError(f"{sec.where()}: 'anchors' needs an even count of numbers")
    return tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))


def _yolo(sec: CfgSection, idx: int, in_shape: Shape, layers: list[Layer]) -> Yolo:
    prev = _head_input(sec, idx, layers)
    classes = sec.get_int("classes", 20)
    anchors = _pairs(sec, sec.get_floats("anchors"))
    mask = sec.get_ints("mask", tuple(range(len(anchors))))
    if sec.get_int("new_coords", 0):
        raise DarknetError(f"{sec.where()}: new_coords=1 (scaled-YOLOv4 heads) is not supported")
    if any(not 0 <= m < len(anchors) for m in mask):
        raise DarknetError(
            f"{sec.where()}: mask {list(mask)} refers past the {len(anchors)} anchors")
    want = len(mask) * (classes + 5)
    if in_shape[2] != want:
        raise DarknetError(
            f"{sec.where()}: the previous layer has {in_shape[2]} filters but "
            f"mask ({len(mask)}) x (classes {classes} + 5) needs {want}"
        )
    return Yolo(idx, sec.line, in_shape, in_shape, prev.index, classes, mask, anchors,
                sec.get_float("scale_x_y", 1.0), sec.get_str("nms_kind", "default"),
                sec.get_float("beta_nms", 0.6))


def _region(sec: CfgSection, idx: int, in_shape: Shape, layers: list[Layer]) -> Region:
    prev = _head_input(sec, idx, layers)
    classes, num = sec.get_int("classes", 20), sec.get_int("num", 1)
    coords = sec.get_int("coords", 4)
    anchors = _pairs(sec, sec.get_floats("anchors"))
    if coords != 4 or len(anchors) != num:
        raise DarknetError(
            f"{sec.where()}: need coords=4 and num ({num}) anchor pairs, got coords={coords} "
            f"and {len(anchors)} pairs"
        )
    want = num * (coords + 1 + classes)
    if in_shape[2] != want:
        raise DarknetError(
            f"{sec.where()}: the previous layer has {in_shape[2]} filters but "
            f"num ({num}) x (coords 4 + 1 + classes {classes}) needs {want}"
        )
    return Region(idx, sec.line, in_shape, in_shape, prev.index, classes, num, coords, anchors,
                  bool(sec.get_int("softmax", 0)))


# --- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvParams:
    """Convolution parameters ready for TF: kernel (kh, kw, in, out) float32, bias (out,)."""

    kernel: np.ndarray
    bias: np.ndarray


def header_size(major: int, minor: int) -> int:
    """Bytes of the .weights header: three int32 then ``seen`` as int64 or int32."""
    wide = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    return 12 + (8 if wide else 4)


def read_weights(path: str | Path, net: DarknetNet) -> dict[int, ConvParams]:
    """Read a darknet .weights file for ``net``; it must be consumed exactly. Its size is
    checked against what the cfg needs before anything past the header is read."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise DarknetError(f"cannot read weights {p}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DarknetError(f"weights {p} is not a regular file")
        size = st.st_size
        if size < 12:
            raise DarknetError(f"{p}: {size} bytes is too short for a darknet weights header")
        try:
            head = f.read(12)
        except OSError as e:
            raise DarknetError(f"cannot read weights {p}: {e.strerror or e}") from e
        major, minor, _revision = (int(v) for v in np.frombuffer(head, "<i4", 3))
        offset = header_size(major, minor)
        convs = net.convs
        expected = offset + sum(c.n_params * 4 for c in convs)
        if expected > MAX_WEIGHTS_BYTES:
            raise DarknetError(
                f"{net.source}: the network needs {expected / 2**30:.1f} GiB of weights; a TFLite "
                f"file holds at most {MAX_WEIGHTS_BYTES >> 30} GiB")
        if size < expected:
            end = offset
            for conv in convs:  # find the layer the file ends inside
                if end + conv.n_params * 4 > size:
                    break
                end += conv.n_params * 4
            raise DarknetError(
                f"{p}: weights file is {expected - size} bytes too short for {net.source}: "
                f"it ends inside {conv.where(net.source)} ({conv.n_params * 4} bytes needed, "
                f"{max(size - end, 0)} left); wrong cfg for these weights, or a truncated file?"
            )
        if size > expected:
            raise DarknetError(
                f"{p}: weights file is {size - expected} bytes too long for {net.source}: "
                f"bytes remain after the last convolution, {convs[-1].where(net.source)}; "
                "wrong cfg for these weights?"
            )
        try:
            blob = head + f.read(expected - len(head) + 1)
        except OSError as e:
            raise DarknetError(f"cannot read weights {p}: {e.strerror or e}") from e
    if len(blob) != expected:
        raise DarknetError(f"{p}: the file changed while it was read ({len(blob)} bytes, "
                           f"{expected} expected)")
    params: dict[int, ConvParams] = {}
    for conv in convs:
        vals = np.frombuffer(blob, "<f4", conv.n_params, offset)
        offset += conv.n_params * 4
        params[conv.index] = cp = _conv_params(conv, vals)
        if not (np.isfinite(cp.kernel).all() and np.isfinite(cp.bias).all()):
            # NaN/inf in the file, or a batch-norm variance below zero: the float model would
            # compute NaN and TFLite's int8 calibration crashes (SIGSEGV) on it.
            raise DarknetError(
                f"{p}: {conv.where(net.source)} has weights that are not finite numbers (NaN, "
                "inf, or a negative batch-norm variance): not a trained darknet weights file")
    return params


def _conv_params(conv: Conv, vals: np.ndarray) -> ConvParams:
    n, cin, k = conv.filters, conv.in_shape[2], conv.size
    pos = 0

    def take(count: int) -> np.ndarray:
        nonlocal pos
        out = vals[pos:pos + count]
        pos += count
        return out

    bias = take(n).astype(np.float64)
    if conv.batch_normalize:
        scales, mean, var = (take(n).astype(np.float64) for _ in range(3))
        factor = scales / np.sqrt(var + BN_EPS)
        bias = bias - mean * factor
    else:
        factor = np.ones(n)
    w = take(n * cin * k * k).reshape(n, cin, k, k).astype(np.float64)
    w = w * factor[:, None, None, None]
    kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)
    return ConvParams(kernel, bias.astype(np.float32))
