"""The model sidecar: the YAML file written by ``edged export`` next to the ``.tflite`` files.

It tells the engine everything the flat tensor files do not: input geometry and colour order,
letterbox pad value, labels, head type and its anchors/masks/strides, and which file to load on
which accelerator. Loading validates every key and names the offending path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edged.errors import ModelError
from edged.spec import Int, Invalid, Num, OneOf, Reader, Text, list_of, map_of, setting
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


def _grid(v: Any) -> tuple[int, int]:
    rows_cols = list_of()(v)
    if len(rows_cols) != 2:
        raise Invalid("expected [rows, cols]")
    return _GRID(rows_cols[0]), _GRID(rows_cols[1])


def _pair(v: Any) -> tuple[float, float]:
    if not isinstance(v, list | tuple) or len(v) != 2 or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < 1e5 for x in v):
        raise Invalid(f"unexpected value {show(v)}")
    return float(v[0]), float(v[1])


def _variants(v: Any) -> dict[str, str]:
    files: dict[str, str] = map_of(Text(255, printable=True), VARIANT_KEYS)(v)
    if "cpu" not in files:
        raise Invalid("missing (the file every machine can run)", ".cpu")
    return files


_SIDE, _GRID = Int(1, MAX_INPUT_SIDE, dots=True), Int(1, MAX_GRID_SIDE, dots=True)


def _one_of(*options: Any) -> OneOf:
    return OneOf(options, listed=True)


@dataclass(frozen=True)
class InputSpec:
    width: int = setting(doc="network input width, pixels", check=_SIDE)
    height: int = setting(doc="network input height, pixels", check=_SIDE)
    channels: int = setting(3, "colour channels", _one_of(3))
    layout: str = setting("NHWC", "tensor layout", _one_of("NHWC"))
    color: str = setting("RGB", "channel order the network expects", _one_of("RGB", "BGR"))
    resize: str = setting("letterbox", "how frames are fitted", _one_of("letterbox", "stretch"))
    pad_value: int = setting(127, "letterbox border, pixel units", Int(0, 255, dots=True))


@dataclass(frozen=True)
class HeadOutput:
    """One output tensor of the network: its grid, and for yolo heads which anchors it uses."""

    grid: tuple[int, int] = setting(doc="(rows, cols)", check=_grid)
    stride: int = setting(doc="network-input pixels per grid cell", check=_SIDE)
    # indices into HeadSpec.anchors (yolo; their range: _cross); empty = all (region)
    mask: tuple[int, ...] = setting((), "anchors used", lambda v: list_of()(v or []))
    scale_x_y: float = setting(1.0, "box centre scale (darknet)", Num(0.5, 4.0))


@dataclass(frozen=True)
class HeadSpec:
    type: str = setting(doc="yolo | region | anchor_free", check=_one_of(*HEAD_TYPES))
    classes: int = setting(doc="number of classes", check=Int(1, MAX_CLASSES, dots=True))
    # yolo: input pixels; region: grid cells
    anchors: tuple[tuple[float, float], ...] = setting(doc="anchor sizes", check=list_of(_pair),
                                                       absent=[])
    outputs: tuple[HeadOutput, ...] = setting(doc="the output tensors")
    nms: str = setting("greedy", "greedy | diou", _one_of("greedy", "diou"))
    nms_beta: float = setting(0.6, "DIoU penalty exponent (darknet beta_nms)", Num(0.1, 10.0))


@dataclass(frozen=True)
class ModelSpec:
    name: str = setting(doc="model name", check=Text(MAX_NAME_CHARS, printable=True),
                        absent="model")
    input: InputSpec = setting(doc="input geometry")
    head: HeadSpec = setting(doc="the detection head")
    labels: tuple[str, ...] = setting(doc="class labels",
                                      check=list_of(Text(MAX_LABEL_CHARS, printable=True)))
    # accelerator key -> file name relative to the sidecar
    variants: Mapping[str, str] = setting(doc="model files per accelerator", check=_variants)
    # vela estimate, quant report, source
    extra: Mapping[str, Any] = setting(factory=dict, key=False)
    path: Path | None = setting(None, key=False)  # where the sidecar was loaded from

    def variant_path(self, key: str) -> Path | None:
        name = self.variants.get(key)
        if name is None:
            return None
        base = self.path.parent if self.path is not None else Path(".")
        return base / name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, **_plain(asdict(self))}
        del out["extra"], out["path"]
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


def dump(spec: ModelSpec, path: str | Path) -> None:
    import yaml  # here: `import edged.cli` needs no third-party package (an install check)

    class Dumper(yaml.SafeDumper):
        """Short lists of numbers (anchors, grids, masks) on one line."""

    def flow_lists(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
        flow = all(isinstance(v, int | float) or (isinstance(v, list) and len(v) <= 2)
                   for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    Dumper.add_representer(list, flow_lists)
    Path(path).write_text(
        "# edged model sidecar, written by `edged export`; see README 'Models'.\n"
        + yaml.dump(spec.to_dict(), Dumper=Dumper, sort_keys=False, width=100),
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
    r = Reader(where, ModelError, listed=True)
    if isinstance(data, dict) and data.get("format") != FORMAT:
        raise r.fail("format", f"expected '{FORMAT}', got {show(data.get('format'))}")
    spec: ModelSpec = r.section(ModelSpec, data, also=("format", *_EXTRA_KEYS))
    head = spec.head
    if len(head.anchors) > 64:
        raise r.fail("head.anchors", f"{len(head.anchors)} anchors: at most 64")
    mask = Int(0, len(head.anchors) - 1, dots=True)
    for i, out in enumerate(head.outputs):
        for m in out.mask:
            r.at(mask, m, f"head.outputs[{i}].mask")
    if len(head.outputs) > 16:
        raise r.fail("head.outputs", f"{len(head.outputs)} outputs: at most 16")
    if not head.outputs:
        raise r.fail("head.outputs", "at least one output is required")
    if len(spec.labels) != head.classes:
        raise r.fail("labels", f"{len(spec.labels)} labels for {head.classes} classes")
    return dataclasses.replace(spec, extra={k: data[k] for k in _EXTRA_KEYS if k in data},
                               path=path)
