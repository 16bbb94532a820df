"""The model sidecar: the YAML file written by ``edged export`` next to the ``.tflite`` files.

It tells the engine everything the flat tensor files do not: input geometry and colour order,
letterbox pad value, labels, head type and its anchors/masks/strides, and which file to load on
which accelerator. Loading validates every key and names the offending path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edged.errors import ModelError
from edged.yamlfile import parse, read_text, show

FORMAT = "edged-model/1"
HEAD_TYPES = ("yolo", "region", "anchor_free")
VARIANT_KEYS = ("cpu", "vx", "ethosu", "float32")
# Bounds on what a sidecar may say: everything here ends up in memory for every frame or in
# every message (the name, the labels), so nothing is unbounded.
MAX_SIDECAR_BYTES = 1 << 20
MAX_CLASSES = 10_000
MAX_LABEL_CHARS = 100
MAX_NAME_CHARS = 128
MAX_INPUT_SIDE = 4096
MAX_GRID_SIDE = 1024


@dataclass(frozen=True)
class InputSpec:
    width: int
    height: int
    channels: int = 3
    layout: str = "NHWC"
    color: str = "RGB"  # channel order the network expects
    resize: str = "letterbox"  # or "stretch"
    pad_value: int = 127  # letterbox border, pixel units 0..255


@dataclass(frozen=True)
class HeadOutput:
    """One output tensor of the network: its grid, and for yolo heads which anchors it uses."""

    grid: tuple[int, int]  # (rows, cols)
    stride: int  # network-input pixels per grid cell
    mask: tuple[int, ...] = ()  # indices into HeadSpec.anchors (yolo); empty = all (region)
    scale_x_y: float = 1.0


@dataclass(frozen=True)
class HeadSpec:
    type: str  # yolo | region | anchor_free
    classes: int
    anchors: tuple[tuple[float, float], ...]  # yolo: input pixels; region: grid cells
    outputs: tuple[HeadOutput, ...]
    nms: str = "greedy"  # greedy | diou
    nms_beta: float = 0.6  # DIoU penalty exponent (darknet beta_nms)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input: InputSpec
    head: HeadSpec
    labels: tuple[str, ...]
    variants: Mapping[str, str]  # accelerator key -> file name relative to the sidecar
    extra: Mapping[str, Any] = field(default_factory=dict)  # vela estimate, quant report, source
    path: Path | None = None  # where the sidecar was loaded from

    def variant_path(self, key: str) -> Path | None:
        name = self.variants.get(key)
        if name is None:
            return None
        base = self.path.parent if self.path is not None else Path(".")
        return base / name

    def to_dict(self) -> dict[str, Any]:
        head = asdict(self.head)
        head["anchors"] = [list(a) for a in self.head.anchors]
        head["outputs"] = [
            {"grid": list(o.grid), "stride": o.stride, "mask": list(o.mask),
             "scale_x_y": o.scale_x_y}
            for o in self.head.outputs
        ]
        out: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "input": asdict(self.input),
            "head": head,
            "labels": list(self.labels),
            "variants": dict(self.variants),
        }
        out.update(_plain(dict(self.extra)))
        return out


def _plain(value: Any) -> Any:
    """Turn tuples and numpy scalars into plain YAML-safe types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


class _Dumper(yaml.SafeDumper):
    """Short lists of numbers (anchors, grids, masks) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, int | float) or (isinstance(v, list) and len(v) <= 2) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump(spec: ModelSpec, path: str | Path) -> None:
    Path(path).write_text(
        "# edged model sidecar, written by `edged export`; see README 'Models'.\n"
        + yaml.dump(spec.to_dict(), Dumper=_Dumper, sort_keys=False, width=100),
        encoding="utf-8",
    )


_EXTRA_KEYS = ("vela", "quantization", "source")


def load(path: str | Path) -> ModelSpec:
    p = Path(path)
    text = read_text(p, MAX_SIDECAR_BYTES, "model sidecar", ModelError)
    return from_dict(parse(text, f"model sidecar {p}", ModelError), p)


def from_dict(data: Any, path: Path | None = None) -> ModelSpec:
    where = str(path) if path else "sidecar"
    try:
        return _from_dict(data, path, where)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
        # a shape the checks below did not foresee: still one line naming the file
        raise ModelError(f"{where}: invalid value ({show(str(e))[1:-1]})") from e


def _from_dict(data: Any, path: Path | None, where: str) -> ModelSpec:
    r = _Reader(where)
    top = r.mapping(data, "")
    allowed = {"format", "name", "input", "head", "labels", "variants", *_EXTRA_KEYS}
    r.no_unknown(top, allowed, "")
    if top.get("format") != FORMAT:
        raise ModelError(f"{where}: format: expected '{FORMAT}', got {show(top.get('format'))}")
    inp = r.mapping(top.get("input"), "input")
    r.no_unknown(inp, {f for f in InputSpec.__dataclass_fields__}, "input")
    input_spec = InputSpec(
        width=r.int_range(inp.get("width"), 1, MAX_INPUT_SIDE, "input.width"),
        height=r.int_range(inp.get("height"), 1, MAX_INPUT_SIDE, "input.height"),
        channels=r.choice(inp.get("channels", 3), (3,), "input.channels"),
        layout=r.choice(inp.get("layout", "NHWC"), ("NHWC",), "input.layout"),
        color=r.choice(inp.get("color", "RGB"), ("RGB", "BGR"), "input.color"),
        resize=r.choice(inp.get("resize", "letterbox"), ("letterbox", "stretch"), "input.resize"),
        pad_value=r.int_range(inp.get("pad_value", 127), 0, 255, "input.pad_value"),
    )
    hd = r.mapping(top.get("head"), "head")
    r.no_unknown(hd, {f for f in HeadSpec.__dataclass_fields__}, "head")
    htype = r.choice(hd.get("type"), HEAD_TYPES, "head.type")
    classes = r.int_range(hd.get("classes"), 1, MAX_CLASSES, "head.classes")
    anchors = tuple(
        (float(a[0]), float(a[1]))
        for a in r.list_of(hd.get("anchors", []), "head.anchors", _pair_ok)
    )
    if len(anchors) > 64:
        raise r.fail("head.anchors", f"{len(anchors)} anchors: at most 64")
    outputs = []
    for i, o in enumerate(r.list_of(hd.get("outputs"), "head.outputs", None)):
        key = f"head.outputs[{i}]"
        om = r.mapping(o, key)
        r.no_unknown(om, {"grid", "stride", "mask", "scale_x_y"}, key)
        grid = r.list_of(om.get("grid"), f"{key}.grid", None)
        if len(grid) != 2:
            raise ModelError(f"{where}: {key}.grid: expected [rows, cols]")
        mask = tuple(r.int_range(m, 0, len(anchors) - 1, f"{key}.mask")
                     for m in r.list_of(om.get("mask", []) or [], f"{key}.mask", None))
        outputs.append(HeadOutput(
            grid=(r.int_range(grid[0], 1, MAX_GRID_SIDE, f"{key}.grid"),
                  r.int_range(grid[1], 1, MAX_GRID_SIDE, f"{key}.grid")),
            stride=r.int_range(om.get("stride"), 1, MAX_INPUT_SIDE, f"{key}.stride"),
            mask=mask,
            scale_x_y=r.number(om.get("scale_x_y", 1.0), 0.5, 4.0, f"{key}.scale_x_y"),
        ))
    if len(outputs) > 16:
        raise r.fail("head.outputs", f"{len(outputs)} outputs: at most 16")
    if not outputs:
        raise ModelError(f"{where}: head.outputs: at least one output is required")
    head = HeadSpec(htype, classes, anchors, tuple(outputs),
                    r.choice(hd.get("nms", "greedy"), ("greedy", "diou"), "head.nms"),
                    r.number(hd.get("nms_beta", 0.6), 0.1, 10.0, "head.nms_beta"))
    labels = tuple(r.text(x, MAX_LABEL_CHARS, f"labels[{i}]")
                   for i, x in enumerate(r.list_of(top.get("labels"), "labels", None)))
    if len(labels) != classes:
        raise ModelError(f"{where}: labels: {len(labels)} labels for {classes} classes")
    variants = r.mapping(top.get("variants"), "variants")
    r.no_unknown(variants, set(VARIANT_KEYS), "variants")
    if "cpu" not in variants:
        raise ModelError(f"{where}: variants.cpu: missing (the file every machine can run)")
    extra = {k: top[k] for k in _EXTRA_KEYS if k in top}
    files = {str(k): r.text(v, 255, f"variants.{k}") for k, v in variants.items()}
    return ModelSpec(r.text(top.get("name", "model"), MAX_NAME_CHARS, "name"), input_spec, head,
                     labels, files, extra, path)


def _pair_ok(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2 and all(
        isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < 1e5 for x in v)


class _Reader:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, msg: str) -> ModelError:
        return ModelError(f"{self.where}: {show(key)[1:-1] if key else '<top>'}: {msg}")

    def number(self, v: Any, lo: float, hi: float, key: str) -> float:
        """A finite number in [lo, hi] (a NaN here once made every message unencodable)."""
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise self.fail(key, f"expected a number in [{lo:g}, {hi:g}], got {show(v)}")
        return float(v)

    def text(self, v: Any, max_chars: int, key: str) -> str:
        """A printable string of at most ``max_chars`` (it ends up in messages and logs)."""
        if not isinstance(v, str) or not v or len(v) > max_chars or not v.isprintable():
            raise self.fail(key, f"expected a printable string of 1-{max_chars} characters, "
                                 f"got {show(v)}")
        return v

    def mapping(self, v: Any, key: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(key, f"expected a mapping, got {type(v).__name__}")
        return v

    def no_unknown(self, m: Mapping[str, Any], allowed: set[str], key: str) -> None:
        unknown = sorted(str(k) for k in set(m) - allowed)
        if unknown:
            prefix = f"{key}." if key else ""
            raise self.fail(f"{prefix}{unknown[0]}", f"unknown key (allowed: {sorted(allowed)})")

    def pos_int(self, v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self.fail(key, f"expected a positive integer, got {show(v)}")
        return v

    def int_range(self, v: Any, lo: int, hi: int, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer in {lo}..{hi}, got {show(v)}")
        return v

    def choice(self, v: Any, options: tuple[Any, ...], key: str) -> Any:
        if v not in options:
            raise self.fail(key, f"must be one of {list(options)}, got {show(v)}")
        return v

    def list_of(self, v: Any, key: str, ok: Any) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(key, f"expected a list, got {type(v).__name__}")
        if ok is not None:
            for i, item in enumerate(v):
                if not ok(item):
                    raise self.fail(f"{key}[{i}]", f"unexpected value {show(item)}")
        return v
