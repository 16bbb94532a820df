"""Compile an int8 TFLite model for the Ethos-U NPU (i.MX 93) with Arm's Vela."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edged.errors import ExportError

ACCELERATOR = "ethos-u65-256"  # the i.MX 93 NPU


@dataclass(frozen=True)
class VelaResult:
    path: Path
    accelerator: str
    system_config: str
    npu_ops: int
    cpu_ops: int
    inference_time_ms: float  # Vela's estimate
    sram_kib: float
    dram_kib: float

    @property
    def npu_op_share(self) -> float:
        total = self.npu_ops + self.cpu_ops
        return self.npu_ops / total if total else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "accelerator": self.accelerator, "system_config": self.system_config,
            "npu_operators": self.npu_ops, "cpu_operators": self.cpu_ops,
            "npu_operator_share": round(self.npu_op_share, 4),
            "estimated_inference_ms": round(self.inference_time_ms, 2),
            "sram_kib": self.sram_kib, "dram_kib": self.dram_kib,
        }


def compile_for_ethosu(model: Path, out_dir: Path, accelerator: str = ACCELERATOR) -> VelaResult:
    """Run Vela on ``model``; writes ``<stem>_vela.tflite`` into ``out_dir``."""
    try:
        import ethosu.vela  # noqa: F401  (presence check; we run it as a subprocess)
    except ImportError as e:
        raise ExportError("--vela needs Arm's compiler: pip install 'edged[export]'") from e
    with tempfile.TemporaryDirectory(prefix="edged-vela-") as tmp:
        cmd = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; "
               "sys.exit(main())", "--accelerator-config", accelerator,
               "--output-dir", tmp, str(model)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(f"vela failed on {model.name}: {tail[0]}")
        produced = Path(tmp) / f"{model.stem}_vela.tflite"
        if not produced.is_file():
            raise ExportError(f"vela produced no {produced.name}")
        summaries = list(Path(tmp).glob(f"{model.stem}_summary_*.csv"))
        if not summaries:
            raise ExportError("vela wrote no performance summary CSV")
        with summaries[0].open(newline="") as fh:
            row = next(csv.DictReader(fh))
        out_dir.mkdir(parents=True, exist_ok=True)
        dest = out_dir / produced.name
        shutil.move(str(produced), dest)
    text = proc.stdout
    return VelaResult(
        path=dest,
        accelerator=accelerator,
        system_config=row.get("system_config", "?"),
        npu_ops=_count(text, "NPU operators"),
        cpu_ops=_count(text, "CPU operators"),
        inference_time_ms=float(row["inference_time"]) * 1000.0,
        sram_kib=_kib(text, "Total SRAM used"),
        dram_kib=_kib(text, "Total DRAM used"),
    )


def _count(text: str, label: str) -> int:
    m = re.search(rf"{label}\s*=\s*(\d+)", text)
    if m is None:
        raise ExportError(f"vela's summary has no '{label}' line")
    return int(m.group(1))


def _kib(text: str, label: str) -> float:
    m = re.search(rf"{label}\s+([\d.]+)\s*KiB", text)
    return float(m.group(1)) if m else float("nan")
