"""``edged export``: darknet cfg + weights → float32 / int8 / Vela TFLite files + sidecar."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged import sidecar
from edged.config import InferenceConfig
from edged.core.preprocess import letterbox
from edged.engine.detector import Detector
from edged.errors import CalibrationError, DarknetError, UsageError
from edged.export.darknet import DarknetNet, Region, Yolo, parse_cfg, read_weights
from edged.export.report import QuantReport, int8_agreement
from edged.export.vela import VelaResult, compile_for_ethosu
from edged.tools import images as calib
from edged.yamlfile import read_text, show

logger = logging.getLogger(__name__)

PAD_VALUE = 127  # darknet letterboxes with 0.5 grey
# The int8 head output has one scale for all its logits. Objectness logits reach -26 while box
# size logits stay within about +-2, so the raw range would cost every box ~7% in w and h.
# Clamping the int8 graph's head to +-8 (sigmoid(-8) = 0.0003, below any useful threshold)
# makes the step 2-3x finer. The float32 model is left exact.
HEAD_CLAMP = 8.0
MAX_NAMES_BYTES = 1 << 20  # coco.names is 625 bytes; 9000 labels fit many times over


@dataclass(frozen=True)
class ExportRequest:
    cfg: Path
    weights: Path
    names: Path
    out_dir: Path
    name: str | None = None
    calib: Sequence[str] = ()
    holdout: Sequence[str] = ()  # report images; default: every 5th calibration sample
    vela: bool = False
    quant: str = "per-channel"  # or per-tensor
    float_only: bool = False
    drop_float: bool = False  # delete the float32 file after the report (for shipping)
    frames_per_video: int = 16
    num_threads: int = InferenceConfig.threads


@dataclass
class ExportResult:
    sidecar_path: Path
    float_path: Path
    int8_path: Path | None = None
    vela: VelaResult | None = None
    report: QuantReport | None = None
    calibration_images: int = 0
    notes: list[str] = field(default_factory=list)


def read_labels(path: Path, classes: int) -> tuple[str, ...]:
    text = read_text(path, MAX_NAMES_BYTES, "names file", UsageError)
    labels = tuple(x.strip() for x in text.splitlines() if x.strip())
    if len(labels) != classes:
        raise DarknetError(
            f"{path}: {len(labels)} labels, but the cfg's detection heads have classes={classes}")
    return labels


def _is_file_name(name: str) -> bool:
    return (0 < len(name) <= 128 and name.isprintable() and "/" not in name
            and not name.startswith("."))


def _write_file(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file in its directory, renamed over it: a symlink
    planted at ``path`` is replaced, never written through, and no half-written model is left
    under the final name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def head_spec(net: DarknetNet) -> sidecar.HeadSpec:
    first = net.heads[0]
    outputs = tuple(
        sidecar.HeadOutput(
            grid=(h.in_shape[0], h.in_shape[1]),
            stride=net.width // h.in_shape[1],
            mask=h.mask if isinstance(h, Yolo) else (),
            scale_x_y=h.scale_x_y if isinstance(h, Yolo) else 1.0,
        )
        for h in net.heads
    )
    if isinstance(first, Region):
        return sidecar.HeadSpec("region", first.classes, first.anchors, outputs)
    nms_kind = "diou" if first.nms_kind in ("greedynms", "diounms") else "greedy"
    return sidecar.HeadSpec("yolo", first.classes, first.anchors, outputs, nms_kind,
                            first.beta_nms)


def _input_batch(image: np.ndarray, net: DarknetNet) -> np.ndarray:
    lb, _ = letterbox(image, net.width, net.height, PAD_VALUE, swap_rb=True)
    batch: np.ndarray = (lb.astype(np.float32) * np.float32(1 / 255))[None]
    return batch


def export_darknet(req: ExportRequest) -> ExportResult:
    if req.quant not in ("per-channel", "per-tensor"):
        raise UsageError(f"--quant must be per-channel or per-tensor, got {req.quant!r}")
    if req.float_only and (req.vela or req.drop_float):
        raise UsageError("--vela and --drop-float need the int8 model; drop --float-only")
    if req.name is not None and not _is_file_name(req.name):
        raise UsageError(f"--name must be a plain file name (at most 128 printable characters, "
                         f"no '/', not starting with '.'), got {show(req.name)}")
    if req.out_dir.exists() and not req.out_dir.is_dir():
        raise UsageError(f"--out {req.out_dir}: not a directory")
    net = parse_cfg(req.cfg)
    if net.channels != 3:
        raise DarknetError(f"{req.cfg}: channels={net.channels}; edged feeds RGB (channels=3)")
    labels = read_labels(req.names, net.classes)
    params = read_weights(req.weights, net)
    name = req.name or f"{req.cfg.stem}-{net.width}"

    samples: list[calib.Sample] = []
    held: list[calib.Sample] = []
    if not req.float_only:
        if not req.calib:
            raise CalibrationError(
                "int8 export needs calibration images: pass --calib IMAGE|DIR|VIDEO... "
                "(photos like the camera will see), or --float-only")
        samples = calib.load_samples(req.calib, req.frames_per_video)
        if req.holdout:
            held = calib.load_samples(req.holdout, req.frames_per_video)
        elif len(samples) >= 5:
            held = samples[4::5]
            samples = [s for i, s in enumerate(samples) if i % 5 != 4]
        if not samples:
            raise CalibrationError("no readable calibration images left (see warnings above)")

    from edged.export import tfgraph  # TensorFlow only from here on

    try:
        req.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {req.out_dir}: cannot create the directory: "
                         f"{e.strerror or e}") from e
    forward = tfgraph.build_forward(net, params)
    logger.info("converting %s to float32 TFLite", name)
    float_path = req.out_dir / f"{name}_float32.tflite"
    _write_file(float_path, tfgraph.convert(forward))
    result = ExportResult(sidecar_path=req.out_dir / f"{name}.yaml", float_path=float_path)
    variants = {"float32": float_path.name, "cpu": float_path.name}

    if not req.float_only:
        batches = [_input_batch(s.image, net) for s in samples]
        # Pin the uint8 input's scale to exactly 1/255 (raw pixels in): the calibrated input
        # range must span [0, 1] even if no image has a pure black and a pure white pixel.
        batches[0] = batches[0].copy()
        batches[0][0, 0, 0, 0], batches[0][0, 0, 1, 0] = 0.0, 1.0

        def representative() -> Iterator[list[np.ndarray]]:
            for b in batches:
                yield [b]

        logger.info("quantizing %s to int8 (%s) on %d calibration images",
                    name, req.quant, len(batches))
        int8_path = req.out_dir / f"{name}_int8.tflite"
        forward_q = tfgraph.build_forward(net, params, clamp_logits=HEAD_CLAMP)
        _write_file(int8_path, tfgraph.convert(forward_q, True, req.quant == "per-tensor",
                                               representative))
        result.int8_path = int8_path
        result.calibration_images = len(batches)
        variants.update(cpu=int8_path.name, vx=int8_path.name)

    if req.vela:
        assert result.int8_path is not None
        logger.info("compiling %s for the Ethos-U NPU with vela", result.int8_path.name)
        result.vela = compile_for_ethosu(result.int8_path, req.out_dir)
        variants["ethosu"] = result.vela.path.name

    extra: dict[str, object] = {
        "source": {"cfg": req.cfg.name, "weights": req.weights.name,
                   "weights_sha256": _sha256(req.weights)},
    }
    quant_info: dict[str, object] = {"scheme": req.quant, "calibration_images": len(samples),
                                     "head_logit_clamp": HEAD_CLAMP}
    if result.int8_path is not None:
        extra["quantization"] = quant_info
    if result.vela is not None:
        extra["vela"] = result.vela.as_dict()
    spec = sidecar.ModelSpec(name, sidecar.InputSpec(net.width, net.height, 3, "NHWC", "RGB",
                                                     "letterbox", PAD_VALUE),
                             head_spec(net), labels, variants, extra)
    sidecar.dump(spec, result.sidecar_path)
    spec = sidecar.load(result.sidecar_path)  # what the engine will see

    if result.int8_path is not None:
        if not held:
            result.notes.append("no held-out images for the int8 report "
                                "(pass --holdout, or at least 5 --calib images)")
        else:
            fdet = Detector(spec, float_path, req.num_threads)
            qdet = Detector(spec, result.int8_path, req.num_threads)
            result.report = int8_agreement(fdet, qdet, held, labels)
            quant_info["report"] = result.report.as_dict()
    if req.drop_float:
        variants.pop("float32")
        float_path.unlink()
    sidecar.dump(sidecar.ModelSpec(spec.name, spec.input, spec.head, spec.labels, variants,
                                   extra), result.sidecar_path)
    return result
