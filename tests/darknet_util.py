"""Helpers for the darknet export tests: random darknet weights, OpenCV and TFLite head runs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edged.core.preprocess import letterbox
from edged.engine.runtime import load_runtime, make_interpreter
from edged.export.darknet import DarknetNet


def write_random_weights(path: Path, net: DarknetNet, seed: int = 0) -> None:
    """A darknet .weights file (v0.2 header, int64 seen) with plausible random values."""
    rng = np.random.default_rng(seed)
    parts = [np.array([0, 2, 5], "<i4").tobytes(), np.array([0], "<i8").tobytes()]
    for conv in net.convs:
        n, cin, k = conv.filters, conv.in_shape[2], conv.size
        parts.append(rng.normal(0, 0.1, n).astype("<f4").tobytes())  # biases / BN beta
        if conv.batch_normalize:
            parts.append(rng.uniform(0.5, 1.5, n).astype("<f4").tobytes())  # scales
            parts.append(rng.normal(0, 0.1, n).astype("<f4").tobytes())  # mean
            parts.append(rng.uniform(0.5, 1.5, n).astype("<f4").tobytes())  # variance
        std = np.sqrt(2.0 / (cin * k * k))
        parts.append(rng.normal(0, std, n * cin * k * k).astype("<f4").tobytes())
    path.write_bytes(b"".join(parts))


def input_batch(image_bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Letterboxed RGB in [0, 1], (1, H, W, 3) float32: the exact tensor both sides get."""
    lb, _ = letterbox(image_bgr, width, height, 127, swap_rb=True)
    return (lb.astype(np.float32) / 255.0)[None]


def opencv_heads(cfg: Path, weights: Path, batch: np.ndarray,
                 head_convs: list[int]) -> list[np.ndarray]:
    """Raw head tensors (NHWC) from OpenCV's own darknet reader for the same input tensor."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    outs = net.forward([f"conv_{i}" for i in head_convs])
    return [o.transpose(0, 2, 3, 1) for o in outs]


def tflite_outputs(model: Path, batch: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    """Run a TFLite model; outputs keyed by their shape (never by order)."""
    interp = make_interpreter(load_runtime(), model, 2)
    interp.set_tensor(interp.get_input_details()[0]["index"], batch)
    interp.invoke()
    return {tuple(int(v) for v in d["shape"]): interp.get_tensor(d["index"])
            for d in interp.get_output_details()}


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|: error relative to the tensor's own scale."""
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def random_float_export(cfg: Path, tmp: Path, seed: int) -> tuple[DarknetNet, Path, Path, Path]:
    """Export ``cfg`` with random weights, float32 only: (net, weights, float model, sidecar)."""
    from edged.export.darknet import parse_cfg
    from edged.export.pipeline import ExportRequest, export_darknet

    net = parse_cfg(cfg)
    weights = tmp / "random.weights"
    write_random_weights(weights, net, seed=seed)
    names = tmp / "random.names"
    names.write_text("".join(f"class{i}\n" for i in range(net.classes)))
    res = export_darknet(ExportRequest(cfg=cfg, weights=weights, names=names, out_dir=tmp,
                                       float_only=True))
    return net, weights, res.float_path, res.sidecar_path
