"""The YAML files edged takes from people (the config, model sidecars), read within bounds.

A file that is not a regular file (a FIFO would block ``open`` forever, ``/dev/zero`` never
ends), larger than its cap, not UTF-8, nested past the parser's recursion, or expanding through
aliases into more values than any real file holds is refused with one line naming it, before it
costs memory or time. libyaml's loader is used when PyYAML was built with it (faster; the same
safe constructors). Error messages never echo a value whole (``show``).
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any

from edged.errors import EdgedError

MAX_VALUES = 100_000  # far above any real config or sidecar (80 labels: ~300 values)
MAX_DEPTH = 32


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxstring = r.maxother = 80
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 6
    r.maxlevel = 3
    return r


_SHOW = _bounded_repr()


def show(value: Any) -> str:
    """``repr`` bounded in size and depth: error messages never echo a value whole."""
    return _SHOW.repr(value)


def read_text(path: Path, max_bytes: int, what: str, error: type[EdgedError]) -> str:
    """The text of the regular file ``path``, at most ``max_bytes``, UTF-8."""
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; for a regular
        # file the flag means nothing.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{what} {path} is not a regular file")
        try:
            raw = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    if len(raw) > max_bytes:
        raise error(f"{path}: larger than {max_bytes // 1024} KiB: not a {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                    "save the file as UTF-8") from e


def parse(text: str, where: str, error: type[EdgedError], max_values: int = MAX_VALUES) -> Any:
    """YAML ``text`` to plain data (safe loader), bounded in nesting and alias expansion."""
    import yaml  # here: `import edged.cli` needs no third-party package (an install check)

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader (no arbitrary objects)
    except RecursionError as e:
        raise error(f"{where}: nested too deeply") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise error(f"{where}: not valid YAML{at}: {show(problem)[1:-1]}") from e
    except ValueError as e:  # a value its constructor refuses: an integer of 5000 digits, a
        # timestamp like 2024-13-45 (Python's int() and datetime raise, not YAMLError)
        raise error(f"{where}: a value edged cannot read: {show(str(e))[1:-1]}") from e
    if count_values(data, max_values) > max_values:
        raise error(f"{where}: nested too deeply or expands to more than {max_values} values "
                    "(YAML aliases?): not a file edged can use")
    return data


def count_values(data: Any, budget: int) -> int:
    """How many values ``data`` expands to, counting shared (aliased) nodes every time they
    are reached; stops counting at ``budget``: O(budget), whatever the aliases multiply to.
    Nesting deeper than MAX_DEPTH counts as over the budget (no real file nests that deep, and
    code walking the data recursively would fail on it later)."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack and count <= budget:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            return budget + 1
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return count
