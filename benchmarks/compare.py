#!/usr/bin/env python3
"""Side-by-side: edged against what users would otherwise run, on this machine, in one run.

    python benchmarks/compare.py [--threads 2] [--seconds 20] [--json] [--skip-tflite-runtime]

Same model file (the shipped yolov3-tiny int8), same thread count, same source (the bundled clip,
decoded as fast as each pipeline takes frames):
  1 bare       a bare interpreter invoke loop (what TFLite's benchmark_model measures)
  2 edged      `edged run` on an unthrottled file source, counted at a ZeroMQ subscriber
  3 example    one loop: capture -> letterbox -> invoke -> per-anchor Python decode ->
               per-class cv2.dnn.NMSBoxes (the vendor/community example pattern)
  4 opencv     OpenCV DNN on the original darknet weights (the classic tutorial pipeline)
Reports fps, capture-to-result latency p50/p99, CPU seconds per frame, RSS, and the ratios 2/1,
2/3, 2/4; then tflite_runtime 2.14 vs ai_edge_litert on the int8 and float32 models (in a
separate venv, since tflite_runtime needs numpy < 2), and the Vela estimate for the i.MX 93.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pipeline import Run, bare_invoke  # noqa: E402

from edged import sidecar  # noqa: E402
from edged.core.preprocess import letterbox_geometry  # noqa: E402
from edged.engine.detector import Detector, DetectParams  # noqa: E402
from edged.export.assets import fetch  # noqa: E402
from edged.media import SAMPLE_CLIP  # noqa: E402
from edged.models import DEFAULT_MODEL  # noqa: E402
from edged.tools.bench import naive_postprocess  # noqa: E402


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _frames() -> Any:
    """The bundled clip, looped forever, decoded as fast as the caller asks."""
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    while True:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        yield time.perf_counter(), frame


def _loop(step: Any, seconds: float) -> dict[str, float]:
    """Run ``step(frame)`` on clip frames for ``seconds``; time from grab to result."""
    frames = _frames()
    for _ in range(5):  # warm up
        step(next(frames)[1])
    lat = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        grabbed, frame = next(frames)
        step(frame)
        lat.append((time.perf_counter() - grabbed) * 1000)
    wall = time.perf_counter() - t0
    return {"fps": len(lat) / wall, "latency_p50_ms": statistics.median(lat),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "cpu_s_per_frame": (time.process_time() - cpu0) / len(lat), "rss_mb": _rss_mb()}


def example_pipeline(threads: int, seconds: float) -> dict[str, float]:
    spec = sidecar.load(DEFAULT_MODEL)
    path = spec.variant_path("cpu")
    assert path is not None
    det = Detector(spec, path, threads)
    params = DetectParams()

    def step(frame: np.ndarray) -> None:
        geom = det.preprocess(frame)
        det.invoke()
        naive_postprocess(det, geom, params)

    return _loop(step, seconds)


def opencv_pipeline(assets_dir: Path, threads: int, seconds: float) -> dict[str, float]:
    a = fetch(assets_dir)
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(a.cfg), str(a.weights))
    out_names = net.getUnconnectedOutLayersNames()

    def step(frame: np.ndarray) -> None:
        g = letterbox_geometry(frame.shape[1], frame.shape[0], 416, 416)
        blob = cv2.dnn.blobFromImage(frame, 1 / 255, (416, 416), swapRB=True, crop=False)
        net.setInput(blob)
        rows = np.concatenate(net.forward(out_names))
        cls = rows[:, 5:].argmax(axis=1)
        conf = rows[np.arange(len(rows)), 5 + cls]
        m = conf >= 0.25
        boxes = (rows[m, :4] * 416).tolist()
        cv2.dnn.NMSBoxesBatched(boxes, conf[m].tolist(), cls[m].tolist(), 0.25, 0.45)
        del g

    out = _loop(step, seconds)
    cv2.setNumThreads(-1)
    return out


def edged_pipeline(threads: int, seconds: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="edged-compare-"))
    run = Run(tmp, threads, realtime=False)
    try:
        time.sleep(2)
        run.collect(2)
        cpu0 = run.cpu_s()
        n, lat, _ = run.collect(seconds)
        return {"fps": n / seconds, "latency_p50_ms": statistics.median(lat),
                "latency_p99_ms": float(np.percentile(lat, 99)),
                "cpu_s_per_frame": (run.cpu_s() - cpu0) / max(n, 1), "rss_mb": run.rss_mb()}
    finally:
        run.stop()


_RUNTIME_PROBE = textwrap.dedent("""
    import json, statistics, sys, time
    import numpy as np
    from {module} import Interpreter
    out = {{}}
    for name, path in json.loads(sys.argv[1]).items():
        it = Interpreter(model_path=path, num_threads={threads})
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        for _ in range(5):
            it.invoke()
        t = []
        for _ in range({runs}):
            t0 = time.perf_counter(); it.invoke(); t.append((time.perf_counter() - t0) * 1000)
        out[name] = statistics.median(t)
    print(json.dumps(out))
""")


def runtimes(threads: int, float_model: Path | None, runs: int = 30) -> dict[str, Any]:
    """Median invoke ms of each runtime on the int8 (and float32) model."""
    spec = sidecar.load(DEFAULT_MODEL)
    models = {"int8": str(spec.variant_path("cpu"))}
    if float_model is not None:
        models["float32"] = str(float_model)
    result: dict[str, Any] = {}
    probe = _RUNTIME_PROBE.format(module="ai_edge_litert.interpreter", threads=threads,
                                  runs=runs)
    result["ai_edge_litert"] = json.loads(subprocess.run(
        [sys.executable, "-c", probe, json.dumps(models)], capture_output=True, text=True,
        check=True).stdout)
    venv = REPO / ".bench-venv-tflite-runtime"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "tflite-runtime==2.14.0",
                        "numpy<2"], check=True)
    probe = _RUNTIME_PROBE.format(module="tflite_runtime.interpreter", threads=threads,
                                  runs=runs)
    proc = subprocess.run([str(py), "-c", probe, json.dumps(models)], capture_output=True,
                          text=True, check=False)
    result["tflite_runtime"] = json.loads(proc.stdout) if proc.returncode == 0 else \
        {"error": proc.stderr.strip().splitlines()[-1:]}
    return result


def float_model(assets_dir: Path) -> Path | None:
    """The float32 export of the same weights (built once, cached next to the assets)."""
    out = assets_dir / "float-export"
    path = out / "yolov3-tiny-416_float32.tflite"
    if path.exists():
        return path
    a = fetch(assets_dir)
    proc = subprocess.run([sys.executable, "-m", "edged", "export", "--cfg", str(a.cfg),
                           "--weights", str(a.weights), "--names", str(a.names), "--out",
                           str(out), "--name", "yolov3-tiny-416", "--float-only"],
                          capture_output=True, text=True, check=False)
    return path if proc.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("EDGED_ASSETS",
                                                                       REPO / ".assets")))
    ap.add_argument("--skip-tflite-runtime", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                       "cpu": _cpu_model(), "python": sys.version.split()[0]},
                           "threads": args.threads, "model": "yolov3-tiny-416 int8"}
    inv = bare_invoke(args.threads)
    res["bare"] = {"fps": inv["fps"], "latency_p50_ms": inv["median_ms"],
                   "cpu_s_per_frame": inv["cpu_s_per_frame"]}
    res["edged"] = edged_pipeline(args.threads, args.seconds)
    res["example"] = example_pipeline(args.threads, args.seconds)
    res["opencv"] = opencv_pipeline(args.assets, args.threads, args.seconds)
    e = res["edged"]
    res["ratios"] = {"edged/bare": e["fps"] / res["bare"]["fps"],
                     "edged/example": e["fps"] / res["example"]["fps"],
                     "edged/opencv": e["fps"] / res["opencv"]["fps"]}
    if not args.skip_tflite_runtime:
        res["runtimes"] = runtimes(args.threads, float_model(args.assets))
    vela = sidecar.load(DEFAULT_MODEL).extra.get("vela", {})
    res["vela"] = vela
    res["max_rss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['machine']['cpu']}, {res['machine']['cpus']} CPUs; {res['model']}, "
          f"{args.threads} threads")
    print(f"{'pipeline':<34}{'fps':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/frame':>14}"
          f"{'RSS MB':>9}")
    print(f"{'1 bare invoke loop':<34}{res['bare']['fps']:>8.1f}"
          f"{res['bare']['latency_p50_ms']:>9.2f}{'-':>9}"
          f"{res['bare']['cpu_s_per_frame'] * 1000:>14.1f}{'-':>9}")
    for key, name in (("edged", "2 edged end to end (subscriber)"),
                      ("example", "3 example loop (Python decode)"),
                      ("opencv", "4 OpenCV DNN, darknet weights")):
        r = res[key]
        print(f"{name:<34}{r['fps']:>8.1f}{r['latency_p50_ms']:>9.2f}{r['latency_p99_ms']:>9.2f}"
              f"{r['cpu_s_per_frame'] * 1000:>14.1f}{r['rss_mb']:>9.1f}")
    over = (res["edged"]["cpu_s_per_frame"] - res["bare"]["cpu_s_per_frame"]) * 1000
    print(f"edged's CPU beyond the bare invoke: {over:.1f} ms per frame (capture, letterbox, "
          "decode, NMS, publishing)")
    rt = res["ratios"]
    print(f"ratios: 2/1 = {rt['edged/bare']:.2f} (target >= 0.85), 2/3 = "
          f"{rt['edged/example']:.2f}x (target >= 1.5x at equal or lower latency), 2/4 = "
          f"{rt['edged/opencv']:.2f}x")
    for name, r in res.get("runtimes", {}).items():
        print(f"runtime {name:<16} " + ", ".join(f"{k} {v:.1f} ms" if isinstance(v, float)
                                                 else f"{k} {v}" for k, v in r.items()))
    if vela:
        total = vela.get("npu_operators", 0) + vela.get("cpu_operators", 0)
        print(f"i.MX 93 (Vela estimate): {vela.get('estimated_inference_ms')} ms, "
              f"{vela.get('npu_operators')}/{total} operators on the NPU")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
