"""Settings declared once: a section is a frozen dataclass whose fields are made with
``setting(default, doc, check)``. ``Reader`` walks untrusted YAML data into such a dataclass
(unknown keys, types, bounds; every error names its key path) and ``rows`` lists the keys with
their defaults, bounds and docs for generated documentation.

Plain dataclasses and this walker rather than pydantic or msgspec: the errors keep edged's own
wording (one line, the key path, "did you mean"), msgspec has no meta-openembedded recipe, and
pydantic's import alone costs 87 ms and 19 MB on an x86 core (see edged.api.messages).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edged.yamlfile import show

Check = Callable[[Any], Any]  # the value (converted) or Invalid


class Invalid(ValueError):
    """A value failed its check; ``key`` is the path below the field (``[2]``, ``.bird``)."""

    def __init__(self, msg: str, key: str = "") -> None:
        super().__init__(msg)
        self.msg, self.key = msg, key


def setting(default: Any = dataclasses.MISSING, doc: str = "", check: Check | None = None, *,
            factory: Callable[[], Any] | None = None, shown: str | None = None,
            null_default: bool = False, key: bool = True, absent: Any = None) -> Any:
    """A field with its doc and check. ``shown``: the default as docs print it; ``null_default``:
    null in the file means the default; ``key=False``: not read from the file. Without a
    default the key is required: a missing one reads as ``absent`` (null)."""
    meta = {"doc": doc, "check": check, "shown": shown, "null_default": null_default, "key": key,
            "absent": absent}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: type, name: str) -> dataclasses.Field[Any]:
    """The field ``name`` of the dataclass ``cls`` (its default, and check and doc in metadata)."""
    return next(f for f in dataclasses.fields(cls) if f.name == name)


@dataclasses.dataclass(frozen=True)
class Num:
    """A number in [lo, hi] (``(lo, hi]``: ``lo_open``; NaN never passes); ``integer``: an int,
    its range written ``lo..hi`` with ``dots``."""

    lo: float
    hi: float
    lo_open: bool = False
    integer: bool = False
    dots: bool = False

    def __call__(self, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int if self.integer else int | float) or \
                not v <= self.hi or not (v > self.lo if self.lo_open else v >= self.lo):
            raise Invalid(f"expected {'an integer' if self.integer else 'a number'} in "
                          f"{self.describe()}, got {show(v)}")
        return v if self.integer else float(v)

    def describe(self) -> str:
        lo, hi = (str(x) if self.integer else f"{x:g}" for x in (self.lo, self.hi))
        return f"{lo}..{hi}" if self.dots else f"{'(' if self.lo_open else '['}{lo}, {hi}]"


def Int(lo: int, hi: int, dots: bool = False) -> Num:
    return Num(lo, hi, integer=True, dots=dots)


@dataclasses.dataclass(frozen=True)
class Text:
    """A non-empty string of at most ``most`` characters (``printable``: no control chars)."""

    most: int
    printable: bool = False

    def __call__(self, v: Any) -> str:
        if not isinstance(v, str) or not 0 < len(v) <= self.most or \
                (self.printable and not v.isprintable()):
            raise Invalid(f"expected a printable string of 1-{self.most} characters, got "
                          f"{show(v)}" if self.printable else "expected a non-empty string of "
                          f"at most {self.most} characters, got {show(v)}")
        return v


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of ``options``, after the ``first`` check; ``listed``: the message shows a list."""

    options: tuple[Any, ...]
    first: Check | None = None
    listed: bool = False

    def __call__(self, v: Any) -> Any:
        v = self.first(v) if self.first is not None else v
        if v not in self.options:
            raise Invalid(f"must be one of {list(self.options)}, got {show(v)}" if self.listed
                          else f"must be {self.describe()}, got {show(v)}")
        return v

    def describe(self) -> str:
        *most, last = (str(o) for o in self.options)
        return f"{', '.join(most)} or {last}" if most else last


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Invalid(f"expected true or false, got {show(v)}")
    return v


def below(key: str, check: Check, v: Any) -> Any:
    """``check(v)``, an error placed at ``key`` below the field (``[2]``, ``.bird``)."""
    try:
        return check(v)
    except Invalid as e:
        raise Invalid(e.msg, key + e.key) from None


def list_of(item: Check = lambda x: x) -> Check:
    """A list whose items pass ``item`` (errors name the index)."""
    def check(v: Any) -> list[Any]:
        if not isinstance(v, list):
            raise Invalid(f"expected a list, got {type(v).__name__}")
        return [below(f"[{i}]", item, x) for i, x in enumerate(v)]
    return check


def map_of(item: Check, allowed: tuple[str, ...] | None = None) -> Check:
    """A mapping whose values pass ``item`` (errors name the key); ``allowed``: its only keys."""
    def check(v: Any) -> dict[Any, Any]:
        v = mapping(v)
        if allowed is not None:
            no_unknown(v, set(allowed), listed=True)
        return {k: below(f".{k}", item, x) for k, x in v.items()}
    return check


def mapping(v: Any) -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping, got {type(v).__name__}")
    return v


def no_unknown(data: dict[Any, Any], allowed: set[str], listed: bool) -> None:
    """Every key of ``data`` is allowed, or: the first that is not with a "did you mean" (or,
    ``listed``, the first in sorted order with the allowed keys)."""
    if listed:
        bad = sorted(str(k) for k in set(data) - allowed)
        if bad:
            raise Invalid(f"unknown key (allowed: {sorted(allowed)})", f".{bad[0]}")
    for k in (k for k in data if k not in allowed):
        near = difflib.get_close_matches(k, sorted(allowed), 1) \
            if isinstance(k, str) and len(k) <= 100 else []
        hint = f"did you mean '{near[0]}'?" if near else f"allowed: {', '.join(sorted(allowed))}"
        raise Invalid(f"unknown key ({hint})",
                      "." + (show(k)[1:-1] if isinstance(k, str) else show(k)))


def _unwrap(hint: Any) -> Any:
    """``X | None`` -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and \
        len(args) == 1 else hint


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


class Reader:
    """Reads data into declared dataclasses. Errors: ``error("<where>: <key path>: <why>")``.
    ``listed``: the model sidecar's wording (unknown keys list the allowed ones; paths shown
    escaped)."""

    def __init__(self, where: str, error: type[Exception], listed: bool = False) -> None:
        self.where, self.error, self.listed = where, error, listed

    def fail(self, path: str, msg: str) -> Exception:
        shown = show(path)[1:-1] if self.listed and path else path
        return self.error(f"{self.where}: {shown or '<top>'}: {msg}")

    def section(self, cls: Any, data: Any, path: str = "", also: tuple[str, ...] = ()) -> Any:
        keys = [f for f in dataclasses.fields(cls) if f.metadata.get("key", True)]
        data = self.at(mapping, data, path)
        self.at(lambda d: no_unknown(d, {f.name for f in keys} | set(also), self.listed), data,
                path)
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: self.value(f, hints[f.name], data, _join(path, "." + f.name))
                      for f in keys})

    def value(self, f: dataclasses.Field[Any], hint: Any, data: dict[str, Any], path: str) -> Any:
        default, v = _default(f), data.get(f.name, f.metadata.get("absent"))
        if (f.name not in data and default is not dataclasses.MISSING) or (v is None and (
                default is None or f.default_factory is not dataclasses.MISSING
                or f.metadata.get("null_default"))):
            return default
        base = _unwrap(hint)
        item = typing.get_args(base)[0] if typing.get_origin(base) is tuple else None
        check = f.metadata.get("check")
        if check is None and dataclasses.is_dataclass(base):
            return self.section(base, v, path)
        if check is None and dataclasses.is_dataclass(item):
            return tuple(self.section(item, x, f"{path}[{i}]")
                         for i, x in enumerate(self.at(list_of(), v, path)))
        out = self.at(check or boolean, v, path)
        return Path(out) if base is Path else tuple(out) if item is not None else out

    def at(self, check: Check, v: Any, path: str) -> Any:
        try:
            return check(v)
        except Invalid as e:
            raise self.fail(_join(path, e.key), e.msg) from None


def _join(path: str, key: str) -> str:
    return path + key if path else key[1:] if key.startswith(".") else key


def rows(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(key path, default (Markdown), bounds, doc) of every key of ``cls``, nested sections
    flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("key", True):
            continue
        base, path = _unwrap(hints[f.name]), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(base) and f.default is not None:
            yield from rows(typing.cast(type, base), f"{path}.")
            continue
        default, describe = _default(f), getattr(f.metadata.get("check"), "describe", None)
        yield (path, f.metadata.get("shown") or f"`{_yaml(default)}`",
               describe() if describe else "", f.metadata.get("doc", ""))
        if dataclasses.is_dataclass(base):
            yield from rows(typing.cast(type, base), f"{path}.")


def _yaml(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    return "{}" if isinstance(v, dict) and not v else str(v)


def markdown(cls: type) -> str:
    """The keys of ``cls`` as a Markdown table."""
    out = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    out += [f"| `{k}` | {d} | {b} | {doc} |" for k, d, b, doc in rows(cls)]
    return "\n".join(out) + "\n"
