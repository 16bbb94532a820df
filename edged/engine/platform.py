"""Which SoC are we on? Read from sysfs / device tree under an injectable root (tests fake it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMX8MP = "imx8mp"
IMX93 = "imx93"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Soc:
    family: str  # imx8mp | imx93 | unknown
    soc_id: str  # raw /sys/devices/soc0/soc_id, "" when absent
    compatible: tuple[str, ...]  # /proc/device-tree/compatible entries

    def describe(self) -> str:
        return self.soc_id or (self.compatible[0] if self.compatible else "no SoC information")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def detect_soc(root: Path = Path("/")) -> Soc:
    """``root`` is ``/`` on a real machine; tests point it at a fake tree."""
    soc_id = _read(root / "sys/devices/soc0/soc_id").decode(errors="replace").strip()
    compat = tuple(
        c.decode(errors="replace")
        for c in _read(root / "proc/device-tree/compatible").split(b"\0") if c
    )
    family = UNKNOWN
    sid = soc_id.lower().replace(".", "").replace(" ", "")
    if sid in ("imx8mp", "imx8mplus") or any(c.startswith("fsl,imx8mp") for c in compat):
        family = IMX8MP
    elif sid == "imx93" or any(c.startswith("fsl,imx93") for c in compat):
        family = IMX93
    return Soc(family, soc_id, compat)
