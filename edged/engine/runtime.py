"""TFLite runtime selection: the only module that imports a TFLite runtime.

Order tried by ``auto``: ``ai_edge_litert`` (PyPI, works with numpy 2), ``tflite_runtime`` (what
NXP BSPs ship), ``tensorflow.lite`` (heavy; present when the export extra is installed).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged._native import quiet_native_output
from edged.errors import ModelError, UsageError, first_line

logger = logging.getLogger(__name__)

# The whole file is read into memory: the largest detection models people run on these boards
# are far below this (YOLOv8x float32: ~270 MB); a 20 GB file must not be read whole.
MAX_MODEL_BYTES = 512 << 20

RUNTIMES: dict[str, str] = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    # not "tensorflow.lite": that is the source package, without Interpreter (TF 2.21)
    "tensorflow": "tensorflow",
}


@dataclass(frozen=True)
class Runtime:
    name: str  # key of RUNTIMES
    interpreter_cls: Any
    load_delegate: Any


def load_runtime(preference: str = "auto") -> Runtime:
    """Import the first available runtime (or exactly ``preference``)."""
    names = list(RUNTIMES) if preference == "auto" else [preference]
    if preference != "auto" and preference not in RUNTIMES:
        raise UsageError(
            f"unknown TFLite runtime '{preference}' (choose auto, {', '.join(RUNTIMES)})")
    errors = []
    for name in names:
        try:
            mod = importlib.import_module(RUNTIMES[name])
        except ImportError as e:
            errors.append(f"{name}: {e}")
            continue
        if name == "tensorflow":
            return Runtime(name, mod.lite.Interpreter, mod.lite.experimental.load_delegate)
        return Runtime(name, mod.Interpreter, mod.load_delegate)
    raise UsageError(
        "no TFLite runtime found (" + "; ".join(errors) + "); "
        "install one: pip install ai-edge-litert (or the BSP's tflite_runtime)"
    )


def make_interpreter(runtime: Runtime, model_path: Path, num_threads: int,
                     delegates: list[Any] | None = None) -> Any:
    """Build and allocate an interpreter; a corrupt or missing file is a ``ModelError``."""
    if num_threads < 1:
        raise UsageError(f"num_threads must be >= 1, got {num_threads}")
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    # Read into memory instead of passing the path: the runtime would mmap the file, and a
    # model overwritten in place (`cp new.tflite model.tflite` before a reload) would then
    # kill the process with SIGBUS. The interpreter keeps a reference to these bytes.
    try:
        size = model_path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelError(f"model file {model_path} is {size / 2**20:.0f} MiB: larger than "
                             f"{MAX_MODEL_BYTES // 2**20} MiB, not a model for this board")
        with model_path.open("rb") as f:
            content = f.read(MAX_MODEL_BYTES + 1)  # bounded even if it grows meanwhile
        if len(content) > MAX_MODEL_BYTES:
            raise ModelError(f"model file {model_path} grew past {MAX_MODEL_BYTES // 2**20} MiB "
                             "while being read")
    except OSError as e:
        raise ModelError(f"cannot read model {model_path}: {e.strerror or e}") from e
    with quiet_native_output() as captured:
        try:
            interp = runtime.interpreter_cls(
                model_content=content, num_threads=num_threads,
                experimental_delegates=delegates or None)
            interp.allocate_tensors()
        except Exception as e:  # a runtime's reaction to a corrupt file varies by version
            logger.debug("runtime output:\n%s", captured())
            raise ModelError(f"cannot load {model_path} with {runtime.name}: {first_line(e)}"
                             ) from e
    return interp
