"""The engine: correctness against OpenCV's darknet pipeline, and backend selection with real
delegate libraries (a gcc-built external delegate) on fake i.MX sysfs trees."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged import sidecar
from edged.core.preprocess import letterbox_geometry
from edged.core.types import Detections
from edged.engine.detector import Detector, DetectParams
from edged.engine.engine import AcceleratorUnavailable, EngineConfig, open_engine
from edged.engine.platform import IMX8MP, IMX93, UNKNOWN, detect_soc
from edged.export.assets import Assets
from edged.models import DEFAULT_MODEL
from tests.coco_util import coco_map50
from tests.conftest import fake_board
from tests.darknet_util import input_batch


def _real_frames(assets: Assets) -> list[np.ndarray]:
    """Photos and video frames never used to calibrate the shipped int8 model."""
    return [cv2.imread(str(f)) for f in sorted(assets.holdout.iterdir())]


def _opencv_pipeline(cvnet: cv2.dnn.Net, frame: np.ndarray) -> Detections:
    """readNetFromDarknet + its yolo layers + NMSBoxesBatched on the identical input tensor."""
    batch = input_batch(frame, 416, 416)
    cvnet.setInput(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    rows = np.concatenate(cvnet.forward(cvnet.getUnconnectedOutLayersNames()))
    cls = rows[:, 5:].argmax(axis=1)
    conf = rows[np.arange(len(rows)), 5 + cls]
    m = conf >= 0.25
    rows, cls, conf = rows[m], cls[m], conf[m]
    xywh = np.stack([(rows[:, 0] - rows[:, 2] / 2) * 416, (rows[:, 1] - rows[:, 3] / 2) * 416,
                     rows[:, 2] * 416, rows[:, 3] * 416], axis=1)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), conf.tolist(), cls.tolist(),
                                              0.25, 0.45), int).reshape(-1)
    xyxy = np.concatenate([xywh[keep, :2], xywh[keep, :2] + xywh[keep, 2:]], axis=1)
    g = letterbox_geometry(frame.shape[1], frame.shape[0], 416, 416)
    return Detections(g.to_source(xyxy.astype(np.float32)), conf[keep].astype(np.float32),
                      cls[keep].astype(np.int32))


@pytest.mark.parametrize(("variant", "minimum"), [("float32", 0.99), ("shipped-int8", 0.95)])
def test_detections_match_opencv_darknet_pipeline(variant: str, minimum: float, assets: Assets,
                                                  v3_export: tuple[Path, str]) -> None:
    out, _ = v3_export
    if variant == "float32":
        det = Detector(sidecar.load(out / "yolov3-tiny-416.yaml"),
                       out / "yolov3-tiny-416_float32.tflite")
    else:
        spec = sidecar.load(DEFAULT_MODEL)
        path = spec.variant_path("cpu")
        assert path is not None
        det = Detector(spec, path)
    cvnet = cv2.dnn.readNetFromDarknet(str(assets.cfg), str(assets.weights))
    gts, preds = [], []
    for frame in _real_frames(assets):
        gts.append(_opencv_pipeline(cvnet, frame))
        preds.append(det.detect(frame, DetectParams(0.01, 0.45, 100)))
    n_gt = sum(len(g) for g in gts)
    assert n_gt >= 40
    m = coco_map50(gts, preds)
    print(f"{variant}: mAP@0.5 vs OpenCV's darknet pipeline = {m:.4f} over {n_gt} boxes")
    assert m >= minimum


# --- SoC detection ---------------------------------------------------------------------------

@pytest.mark.parametrize(("soc_id", "compatible", "family"), [
    ("i.MX8MP", None, IMX8MP),
    ("i.MX93", None, IMX93),
    (None, ["fsl,imx8mp-evk", "fsl,imx8mp"], IMX8MP),
    (None, ["fsl,imx93-11x11-evk", "fsl,imx93"], IMX93),
    ("i.MX8MM", ["fsl,imx8mm-evk", "fsl,imx8mm"], UNKNOWN),
    (None, None, UNKNOWN),
])
def test_detect_soc(soc_id, compatible, family, tmp_path: Path) -> None:
    assert detect_soc(fake_board(tmp_path, soc_id, compatible)).family == family


# --- backend selection -----------------------------------------------------------------------

def _cpu_detections(frames: list[np.ndarray]) -> list[Detections]:
    eng = open_engine(DEFAULT_MODEL, EngineConfig(delegate="cpu"))
    return [eng.detector.detect(f, DetectParams()) for f in frames]


def _same(a: list[Detections], b: list[Detections]) -> bool:
    return all(np.array_equal(x.class_ids, y.class_ids) and np.allclose(x.boxes, y.boxes)
               and np.allclose(x.scores, y.scores) for x, y in zip(a, b, strict=True))


def test_external_delegate_gets_options_and_detects(recording_delegate: Path, assets: Assets,
                                                    tmp_path: Path) -> None:
    record = tmp_path / "options.txt"
    eng = open_engine(DEFAULT_MODEL, EngineConfig(
        delegate=str(recording_delegate),
        delegate_options={"record_file": str(record), "enable_cache": True, "priority": 3}))
    assert eng.backend == "external" and eng.fallback_reason is None
    lines = record.read_text().splitlines()
    assert f"record_file={record}" in lines
    assert "enable_cache=true" in lines  # booleans as NXP parsers want them, not "True"
    assert "priority=3" in lines
    assert "prepare" in lines  # the interpreter really applied the delegate
    frames = _real_frames(assets)[:8]
    got = [eng.detector.detect(f, DetectParams()) for f in frames]
    assert sum(len(d) for d in got) > 0
    assert _same(got, _cpu_detections(frames))


@pytest.mark.parametrize(("fail", "reason"), [
    ("create", "cannot load delegate"),
    ("prepare", "delegate cannot run"),
])
def test_failing_delegate_falls_back_once(fail: str, reason: str, recording_delegate: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edged"):
        eng = open_engine(DEFAULT_MODEL, EngineConfig(delegate=str(recording_delegate),
                                                      delegate_options={"fail": fail},
                                                      probe_delegate=False))  # in-process
    assert eng.backend == "cpu"
    assert eng.fallback_reason is not None and reason in eng.fallback_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()


def test_imx8mp_without_vx_delegate_falls_back(tmp_path: Path) -> None:
    root = fake_board(tmp_path, "i.MX8MP")
    eng = open_engine(DEFAULT_MODEL, EngineConfig(sysfs_root=root,
                                                  vx_library=str(tmp_path / "libvx_delegate.so")))
    assert eng.soc.family == IMX8MP and eng.backend == "cpu"
    assert eng.fallback_reason is not None and "libvx_delegate.so not found" in eng.fallback_reason


def test_imx8mp_vx_path_passes_cache_options(recording_delegate: Path, tmp_path: Path) -> None:
    root = fake_board(tmp_path / "root", "i.MX8MP")
    cache = tmp_path / "cache"
    cache.mkdir()
    record = tmp_path / "options.txt"
    # a zero-size cache file from an interrupted compile would be taken as valid: removed first
    spec = sidecar.load(DEFAULT_MODEL)
    eng = open_engine(DEFAULT_MODEL, EngineConfig(
        sysfs_root=root, vx_library=str(recording_delegate), cache_dir=cache,
        delegate_options={"record_file": str(record)}))
    assert eng.backend == "vx"
    opts = dict(ln.split("=", 1) for ln in record.read_text().splitlines() if "=" in ln)
    assert opts["allowed_cache_mode"] == "true"
    cache_file = Path(opts["cache_file_path"])
    assert cache_file.parent == cache and spec.name in cache_file.name
    cache_file.write_bytes(b"")
    open_engine(DEFAULT_MODEL, EngineConfig(sysfs_root=root, vx_library=str(recording_delegate),
                                            cache_dir=cache))
    assert not cache_file.exists()


def test_imx93_ethosu_with_the_vela_model(recording_delegate: Path, tmp_path: Path) -> None:
    """A delegate that does not claim the ethos-u custom op leaves it unresolved: fall back."""
    root = fake_board(tmp_path / "root", None, ["fsl,imx93-11x11-evk", "fsl,imx93"])
    record = tmp_path / "options.txt"
    eng = open_engine(DEFAULT_MODEL, EngineConfig(
        sysfs_root=root, ethosu_library=str(recording_delegate), cache_dir=tmp_path / "c",
        delegate_options={"record_file": str(record)}))
    assert eng.backend == "cpu"
    assert eng.fallback_reason is not None
    assert "_vela.tflite" in eng.fallback_reason and "ethos-u" in eng.fallback_reason
    lines = record.read_text().splitlines()
    assert "device_name=/dev/ethosu0" in lines and f"cache_file_path={tmp_path / 'c'}" in lines


def test_require_accelerator_is_fatal(tmp_path: Path) -> None:
    root = fake_board(tmp_path, "i.MX93")
    with pytest.raises(AcceleratorUnavailable, match=r"nope\.so not found"):
        open_engine(DEFAULT_MODEL, EngineConfig(sysfs_root=root, require_accelerator=True,
                                                ethosu_library=str(tmp_path / "nope.so")))
    with pytest.raises(AcceleratorUnavailable, match="selects the CPU"):
        open_engine(DEFAULT_MODEL, EngineConfig(delegate="cpu", require_accelerator=True))


def test_unknown_machine_uses_cpu_without_warning(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edged"):
        eng = open_engine(DEFAULT_MODEL, EngineConfig(sysfs_root=tmp_path))
    assert eng.backend == "cpu" and eng.fallback_reason is None and not caplog.records
    assert eng.warmup_ms > 0
