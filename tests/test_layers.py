"""The folders of edged/ are the layers of ARCHITECTURE.md, and imports only point down.

Every ``import edged...`` in the package (function-local ones too: a lazy import is still a
dependency) is checked against the table below; a new module must be placed in a layer here.
``edged check-config`` is checked to load neither OpenCV, numpy, ZeroMQ nor a TFLite runtime.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PKG = REPO / "edged"

# layer -> the layers it may import (itself included implicitly)
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "leaves": {"base"},
    "core": {"base"},
    "api": {"base", "core"},
    "engine": {"base", "leaves", "core"},
    "tools": {"base", "leaves", "core", "engine", "api"},
    "export": {"base", "leaves", "core", "engine", "tools"},
    "pipeline": {"base", "leaves", "core", "engine", "api"},
    "service": {"base", "leaves", "core", "engine", "api", "pipeline"},
    "entry": {"base", "leaves", "core", "engine", "api", "tools", "export", "pipeline",
              "service"},
}
FOLDERS = {"core", "api", "engine", "tools", "export", "pipeline", "service"}
TOP_LEVEL = {
    "edged": "base", "edged.errors": "base", "edged.yamlfile": "base",
    "edged.spec": "base", "edged._native": "base", "edged._nativelog": "base",
    "edged.media": "base", "edged.models": "base",
    "edged.config": "leaves", "edged.sidecar": "leaves", "edged.client": "api",
    "edged.cli": "entry", "edged.__main__": "entry",
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FOLDERS:
        return parts[1]
    return TOP_LEVEL.get(".".join(parts[:2]))  # edged.config, edged.models.<data module>


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _edged_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every edged import in ``path``, lazy ones included."""
    name = _module_name(path, root)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("edged")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against this package
                base = pkg.rsplit(".", node.level - 1)[0]
                mod = f"{base}.{mod}" if mod else base
            if not mod.startswith("edged"):
                continue
            for alias in node.names:  # `from edged import sidecar` imports edged.sidecar
                sub = f"{mod}.{alias.name}"
                is_module = (root / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (root / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else mod))
    return found


def violations(root: Path) -> list[str]:
    """Every import in ``root/edged`` against the layers, and every module without one."""
    wrong = []
    for path in sorted((root / "edged").rglob("*.py")):
        here = layer_of(_module_name(path, root))
        if here is None:
            wrong.append(f"{path.relative_to(root)}: in no layer (add it to tests/test_layers.py)")
            continue
        for line, target in _edged_imports(path, root):
            there = layer_of(target)
            if there is None or (there != here and there not in ALLOWED[here]):
                wrong.append(f"{path.relative_to(root)}:{line}: {here} imports {target} ({there})")
    return wrong


def test_imports_point_down() -> None:
    wrong = violations(REPO)
    assert not wrong, "imports against the layers of ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_the_checker_finds_upward_and_lazy_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "edged"
    (pkg / "core").mkdir(parents=True)
    (pkg / "pipeline").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "pipeline" / "capture.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from edged.pipeline.capture import x\n")
    (pkg / "core" / "nms.py").write_text("from .. import config\nimport edged.core.types\n")
    (pkg / "stray.py").write_text("")
    assert violations(tmp_path) == [
        "edged/config.py:2: leaves imports edged.pipeline.capture (pipeline)",
        "edged/core/nms.py:1: core imports edged.config (leaves)",
        "edged/stray.py: in no layer (add it to tests/test_layers.py)",
    ]


@pytest.mark.parametrize("heavy", ["cv2", "numpy", "zmq", "ai_edge_litert", "tflite_runtime",
                                   "tensorflow"])
def test_check_config_loads_nothing_heavy(heavy: str, importtime: str) -> None:
    assert f" {heavy}" not in importtime and f" {heavy}." not in importtime, \
        f"edged check-config imports {heavy}"


@pytest.fixture(scope="module")
def importtime() -> str:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edged", "check-config",
         str(REPO / "config.example.yaml")],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = [line.rsplit("|", 1)[1].rstrip() for line in proc.stderr.splitlines()
               if line.startswith("import time:") and "|" in line]
    assert "edged.config" in {m.strip() for m in modules}, "importtime output not understood"
    return "\n".join(modules)
