"""Acceptance tests of `edged export` (issue 2): real weights, real images, OpenCV as referee."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged import sidecar
from edged.core.metrics import average_precision
from edged.engine.detector import Detector, DetectParams
from edged.engine.runtime import load_runtime, make_interpreter
from edged.export.assets import Assets
from edged.export.darknet import parse_cfg
from edged.export.pipeline import ExportRequest, export_darknet
from tests.coco_util import coco_map50
from tests.conftest import DATA
from tests.darknet_util import (
    input_batch,
    opencv_heads,
    random_float_export,
    relative_error,
    tflite_outputs,
    write_random_weights,
)

MAX_REL_ERR = 1e-4


def _images(assets: Assets, count: int) -> list[np.ndarray]:
    files = sorted(assets.holdout.iterdir())
    step = max(1, len(files) // count)
    return [cv2.imread(str(f)) for f in files[::step][:count]]


def test_float_yolov3_tiny_heads_match_opencv_darknet(assets: Assets,
                                                      v3_export: tuple[Path, str]) -> None:
    out, _ = v3_export
    net = parse_cfg(assets.cfg)
    convs = [h.in_layer for h in net.heads]
    for img in _images(assets, 6):
        batch = input_batch(img, net.width, net.height)
        got = tflite_outputs(out / "yolov3-tiny-416_float32.tflite", batch)
        refs = opencv_heads(assets.cfg, assets.weights, batch, convs)
        assert len(refs) == 2
        for ref in refs:
            err = relative_error(got[ref.shape], ref)
            assert err <= MAX_REL_ERR, f"head {ref.shape}: relative error {err:.2e}"
            assert np.abs(ref).max() > 1.0  # a real activation, not an all-zero tensor


@pytest.mark.parametrize(("cfg_name", "expect_head"), [
    ("yolov4-tiny.cfg", "yolo"),  # stride-2 convs with darknet's top/left padding, grouped route
    ("yolov2-tiny.cfg", "region"),  # stride-1 maxpool, region head
    ("tiny-test.cfg", "yolo"),  # non-square 96x64 input, route across a grouped split
])
def test_random_weight_structures_match_opencv(cfg_name: str, expect_head: str, assets: Assets,
                                                tmp_path: Path) -> None:
    cfg = DATA / cfg_name
    net, weights, float_path, sidecar_path = random_float_export(cfg, tmp_path, seed=7)
    assert sidecar.load(sidecar_path).head.type == expect_head
    convs = [h.in_layer for h in net.heads]
    for img in _images(assets, 3):
        batch = input_batch(img, net.width, net.height)
        got = tflite_outputs(float_path, batch)
        refs = opencv_heads(cfg, weights, batch, convs)
        for ref in refs:
            err = relative_error(got[ref.shape], ref)
            assert err <= MAX_REL_ERR, f"{cfg_name} head {ref.shape}: relative error {err:.2e}"


def test_int8_detections_agree_with_float(assets: Assets, v3_export: tuple[Path, str]) -> None:
    out, stdout = v3_export
    spec = sidecar.load(out / "yolov3-tiny-416.yaml")
    fdet = Detector(spec, out / "yolov3-tiny-416_float32.tflite")
    qdet = Detector(spec, out / "yolov3-tiny-416_int8.tflite")
    # full-integer contract: raw uint8 pixels in (scale 1/255), int8 raw heads out
    qi = qdet.interpreter.get_input_details()[0]
    assert qi["dtype"] == np.uint8 and qi["quantization"][1] == 0
    assert abs(qi["quantization"][0] * 255 - 1) < 1e-6
    assert {d["dtype"] for d in qdet.interpreter.get_output_details()} == {np.int8}

    calib_names = {f.name for f in assets.calib.iterdir()}
    held = sorted(assets.holdout.iterdir())
    assert held and not calib_names & {f.name for f in held}  # disjoint from calibration
    gts, preds = [], []
    for f in held:
        img = cv2.imread(str(f))
        gts.append(fdet.detect(img, DetectParams(0.25, 0.45, 100)))
        preds.append(qdet.detect(img, DetectParams(0.01, 0.45, 100)))
    assert sum(len(g) for g in gts) >= 20  # enough float detections to mean something
    coco = coco_map50(gts, preds)
    ours, _ = average_precision(gts, preds)
    print(f"int8 vs float mAP@0.5: pycocotools {coco:.4f}, edged.core.metrics {ours:.4f}")
    assert coco >= 0.95
    assert abs(coco - ours) < 0.01  # our report's metric agrees with pycocotools
    assert "mAP@0.5 = " in stdout  # and the CLI printed its report


def test_vela_variant_and_summary(v3_export: tuple[Path, str]) -> None:
    out, stdout = v3_export
    spec = sidecar.load(out / "yolov3-tiny-416.yaml")
    vela_path = spec.variant_path("ethosu")
    assert vela_path is not None and vela_path.name == "yolov3-tiny-416_int8_vela.tflite"
    assert vela_path.stat().st_size > 1_000_000
    v = spec.extra["vela"]
    assert v["accelerator"] == "ethos-u65-256"
    assert v["npu_operators"] > 0 and v["cpu_operators"] == 0
    assert v["npu_operator_share"] == 1.0
    assert 1.0 < v["estimated_inference_ms"] < 100.0
    assert "100% on the NPU" in stdout
    # The compiled model is one ethos-u custom op that a CPU runtime cannot run: it must at
    # least be a well-formed flatbuffer naming that op.
    assert b"ethos-u" in vela_path.read_bytes()


@pytest.mark.parametrize("quant", ["per-channel", "per-tensor"])
def test_quant_granularity(quant: str, assets: Assets, tmp_path: Path) -> None:
    cfg = DATA / "tiny-test.cfg"
    net = parse_cfg(cfg)
    weights = tmp_path / "w.weights"
    write_random_weights(weights, net, seed=3)
    res = export_darknet(ExportRequest(cfg=cfg, weights=weights, names=DATA / "tiny-test.names",
                                       out_dir=tmp_path, calib=[str(assets.calib)],
                                       quant=quant))
    assert res.int8_path is not None
    interp = make_interpreter(load_runtime(), res.int8_path, 1)
    conv_filters = [d for d in interp.get_tensor_details()
                    if d["dtype"] == np.int8 and len(d["shape"]) == 4
                    and tuple(d["shape"][1:3]) in {(1, 1), (3, 3)}
                    and d["shape"][0] in {c.filters for c in net.convs}]
    assert len(conv_filters) == len(net.convs)
    n_scales = {len(d["quantization_parameters"]["scales"]) for d in conv_filters}
    if quant == "per-tensor":
        assert n_scales == {1}
    else:
        assert min(n_scales) > 1
    assert json.loads(json.dumps(sidecar.load(res.sidecar_path).extra["quantization"]))[
        "scheme"] == quant
