"""The ``edged`` command. The only module that prints for humans or decides the exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged import __version__
from edged.config import DetectionConfig, InferenceConfig, PublishConfig
from edged.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EdgedError, UsageError
from edged.service.log import setup_cli_logging
from edged.spec import declared

if TYPE_CHECKING:
    import numpy as np

    from edged.engine.detector import DetectParams
    from edged.engine.engine import Engine

logger = logging.getLogger("edged")


# Every command refuses images above this many pixels before decoding them (OpenCV's own bound
# is 2**30: a 20000x20000 PNG took 2.4 GB); videos are held to the same (edged.tools.images).
MAX_IMAGE_PIXELS = 1 << 27
# The bounds of the command-line numbers, the same as the config's where it has the setting.
RUNS = (1, 100_000)
SUB_TIMEOUT_S = (0.0, 86_400.0)
SUB_COUNT = (0, 1 << 31)
MODEL_HELP = "model sidecar .yaml (default: the shipped COCO yolov3-tiny)"


def _number(kind: type[int] | type[float], lo: float, hi: float) -> Callable[[str], int | float]:
    """An argparse ``type=`` for a finite number in [lo, hi] (refuses nan and inf too)."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}") from None
        if not lo <= value <= hi:  # False for nan
            raise argparse.ArgumentTypeError(f"must be {what} in [{lo:g}, {hi:g}], got "
                                             f"{_shown(text)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _doc(cls: type, name: str) -> str:
    """A config key's doc as option help: no Markdown, and "null" (YAML) is "unset" here."""
    return str(declared(cls, name).metadata["doc"]).replace("`", "").replace("null:", "unset:")


def _declared(cls: type, name: str, doc: str | None = None) -> dict[str, Any]:
    """``add_argument`` keywords for a number the config file declares: the same default,
    bounds and doc."""
    f = declared(cls, name)
    check = f.metadata["check"]
    return {"type": _number(int if check.integer else float, check.lo, check.hi),
            "default": f.default, "help": f"{doc or _doc(cls, name)}; {check.lo:g}.."
                                          f"{check.hi:g}, default {f.default:g}"}


def _shown(text: str) -> str:
    return text if len(text) <= 40 and text.isprintable() else repr(text[:40]) + "..."


def _printable(text: str) -> str:
    r"""``text`` with every non-printable character escaped (``\x1b``, ``\n``): what a
    publisher or a model file names must not drive the terminal or forge lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"edged: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_export(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "export", help="convert a darknet YOLO (cfg + weights) to TFLite float32/int8/Vela",
        description="Export a darknet YOLO to TFLite: <name>_float32.tflite, <name>_int8.tflite "
                    "(full-integer, calibrated on --calib), <name>_int8_vela.tflite (--vela, "
                    "i.MX 93) and the <name>.yaml sidecar edged loads.")
    p.add_argument("--cfg", required=True, type=Path, help="darknet .cfg file")
    p.add_argument("--weights", required=True, type=Path, help="darknet .weights file")
    p.add_argument("--names", required=True, type=Path, help="labels, one per line")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--name", help="model name (default: <cfg stem>-<width>)")
    p.add_argument("--calib", nargs="+", default=[], metavar="PATH",
                   help="calibration images, directories of images, or videos")
    p.add_argument("--holdout", nargs="+", default=[], metavar="PATH",
                   help="images for the int8-vs-float report (default: every 5th --calib image, "
                        "then not used for calibration)")
    p.add_argument("--vela", action="store_true",
                   help="also compile for the i.MX 93 Ethos-U65 NPU with Vela")
    p.add_argument("--quant", choices=("per-channel", "per-tensor"), default="per-channel",
                   help="int8 weight quantization (default per-channel; some NPU flows want "
                        "per-tensor)")
    p.add_argument("--float-only", action="store_true", help="write only the float32 model")
    p.add_argument("--drop-float", action="store_true",
                   help="delete the float32 model after the int8 report (what the package ships)")
    p.add_argument("--threads", **_declared(InferenceConfig, "threads",
                                            "CPU threads for the report"))
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from edged.export.pipeline import ExportRequest, export_darknet

    res = export_darknet(ExportRequest(
        cfg=args.cfg, weights=args.weights, names=args.names, out_dir=args.out, name=args.name,
        calib=args.calib, holdout=args.holdout, vela=args.vela, quant=args.quant,
        float_only=args.float_only, drop_float=args.drop_float, num_threads=args.threads))
    if res.float_path.exists():
        print(f"float32  {res.float_path}")
    if res.int8_path:
        print(f"int8     {res.int8_path}  ({res.calibration_images} calibration images)")
    if res.vela:
        v = res.vela
        print(f"vela     {v.path}  ({v.accelerator}: {v.npu_ops} NPU / {v.cpu_ops} CPU operators, "
              f"{v.npu_op_share:.0%} on the NPU; estimated {v.inference_time_ms:.1f} ms)")
    print(f"sidecar  {res.sidecar_path}")
    if res.report:
        for line in res.report.lines():
            print(_printable(line))  # it names the labels of the --names file
    for note in res.notes:
        print(f"note: {_printable(note)}")
    return EXIT_OK


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and backend")
    g.add_argument("--model", type=Path, default=None,
                   help=MODEL_HELP)
    g.add_argument("--delegate", default=InferenceConfig.delegate,
                   help=f"{_doc(InferenceConfig, 'delegate')}; default "
                        f"{InferenceConfig.delegate}")
    g.add_argument("--delegate-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the delegate (repeatable)")
    g.add_argument("--require-accelerator", action="store_true",
                   help="fail (exit 3) instead of falling back to the CPU")
    g.add_argument("--threads", **_declared(InferenceConfig, "threads"))
    runtime = declared(InferenceConfig, "runtime")
    g.add_argument("--runtime", default=runtime.default,
                   help=f"{runtime.metadata['check'].describe()} (default {runtime.default})")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help=_doc(InferenceConfig, "cache_dir"))
    g.add_argument("--sysfs-root", type=Path, default=Path("/"),
                   help=argparse.SUPPRESS)  # tests pretend to be a board with a fake tree


def _open_engine(args: argparse.Namespace) -> Engine:
    from edged.engine.engine import EngineConfig, open_engine
    from edged.models import DEFAULT_MODEL

    options = {}
    for item in args.delegate_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--delegate-option expects KEY=VALUE, got {item!r}")
        options[key] = value
    engine = open_engine(args.model or DEFAULT_MODEL, EngineConfig(
        delegate=args.delegate, delegate_options=options,
        require_accelerator=args.require_accelerator, runtime=args.runtime,
        threads=args.threads, cache_dir=args.cache_dir, sysfs_root=args.sysfs_root))
    logger.info("model %s on %s (%s, %d threads)%s", _printable(engine.model_name),
                engine.backend, engine.runtime, args.threads,
                f"; fallback: {_printable(engine.fallback_reason)}"
                if engine.fallback_reason else "")
    return engine


def _detect_params(args: argparse.Namespace) -> DetectParams:
    from edged.engine.detector import DetectParams

    return DetectParams(conf_threshold=args.conf, iou_threshold=args.iou,
                        max_detections=args.max_detections)


def _add_detect_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", **_declared(DetectionConfig, "conf_threshold"))
    p.add_argument("--iou", **_declared(DetectionConfig, "iou_threshold"))
    p.add_argument("--max-detections", **_declared(DetectionConfig, "max_detections"))


def _add_detect(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("detect", help="detect objects in image and video files",
                       description="Run the model on images and videos. Prints a summary line "
                                   "per image/frame, or one JSON object per line with --json.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per image/frame")
    p.add_argument("--annotate", type=Path, metavar="DIR",
                   help="write images (and videos) with boxes drawn into DIR")
    _add_detect_params(p)
    _add_engine_options(p)
    p.set_defaults(func=_cmd_detect)


def _cmd_detect(args: argparse.Namespace) -> int:
    from edged.api.messages import detections_of, to_wire
    from edged.tools.detect_files import FrameResult, run_detect

    params = _detect_params(args)
    engine = _open_engine(args)
    labels = engine.detector.spec.labels
    failed = 0
    for res in run_detect(engine.detector, args.paths, params, args.annotate):
        if not isinstance(res, FrameResult):
            failed += 1
            print(f"edged: error: {_printable(res.source)}: {res.message}", file=sys.stderr)
            continue
        dets = detections_of(res.detections, labels, res.width, res.height)
        if args.json:
            obj: dict[str, object] = {"source": res.source}
            if res.frame is not None:
                obj["frame"] = res.frame
            obj.update(width=res.width, height=res.height, detections=to_wire(dets))
            print(json.dumps(obj), flush=True)
        else:
            where = _printable(res.source) + (f"#{res.frame}" if res.frame is not None else "")
            found = ", ".join(f"{_printable(d.label)} {d.score:.2f}"
                              for d in dets) or "nothing"
            print(f"{where}: {found}", flush=True)
    return EXIT_USAGE if failed else EXIT_OK


def _add_bench(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("bench", help="measure preprocess, invoke and decode+NMS latency",
                       description="Latency of each stage on one real 1280x720 frame, and the "
                                   "vectorized decoder against a per-anchor Python loop.")
    p.add_argument("--runs", type=_number(int, *RUNS), default=50,
                   help="timed runs per stage (default 50)")
    p.add_argument("--image", type=Path, help="frame to use (default: the bundled clip)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_detect_params(p)
    _add_engine_options(p)
    p.set_defaults(func=_cmd_bench)


def _bench_frame(path: Path | None) -> np.ndarray:
    import cv2

    from edged.media import SAMPLE_CLIP
    from edged.tools.images import read_image

    if path is not None:
        img = read_image(path) if path.is_file() else "no such file"
        if img is None or isinstance(img, str):
            raise UsageError(f"cannot read image {path}: {img or 'not a readable image'}")
        return img
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 130)  # a frame with a bird in it
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise EdgedError(f"cannot read the bundled clip {SAMPLE_CLIP}")
    return frame


def _cmd_bench(args: argparse.Namespace) -> int:
    from edged.tools.bench import run_bench

    params = _detect_params(args)
    frame = _bench_frame(args.image)
    engine = _open_engine(args)
    r = run_bench(engine.detector, frame, args.runs, params, engine.backend, engine.runtime,
                  args.threads)
    if args.json:
        print(json.dumps(r.as_dict()))
        return EXIT_OK
    print(f"model {_printable(r.model)} ({_printable(r.model_file)}) on {r.backend} via "
          f"{r.runtime}, {r.threads} threads, frame {r.frame[0]}x{r.frame[1]}, "
          f"{r.detections} detections")
    print(f"{'stage':<28}{'runs':>6}{'min ms':>10}{'median ms':>11}{'p90 ms':>10}")
    for name, t in (("preprocess (letterbox)", r.preprocess), ("invoke", r.invoke),
                    ("decode+NMS (edged)", r.decode_nms),
                    ("decode+NMS (per-anchor loop)", r.naive_decode_nms)):
        print(f"{name:<28}{t.runs:>6}{t.min_ms:>10.3f}{t.median_ms:>11.3f}{t.p90_ms:>10.3f}")
    print(f"vectorized decode is {r.speedup:.0f}x faster than the loop "
          f"(same detections: {'yes' if r.naive_agrees else 'NO'})")
    return EXIT_OK


def _add_eval(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("eval", help="COCO-style AP of a model on your annotated images",
                       description="Evaluate with the model-card protocol (score 0.001, NMS "
                                   "0.45, top-100, pycocotools).")
    p.add_argument("--images", type=Path, required=True, help="directory of the images")
    p.add_argument("--annotations", type=Path, required=True,
                   help="COCO instances JSON (e.g. instances_val2017.json)")
    p.add_argument("--json", action="store_true")
    _add_engine_options(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from edged.tools.evaluate import evaluate

    engine = _open_engine(args)
    r = evaluate(engine.detector, args.images, args.annotations)
    if args.json:
        print(json.dumps(r.as_dict()))
        return EXIT_OK
    print(f"{r.images} images, model {_printable(engine.model_name)} on {engine.backend}")
    print(f"AP {r.ap:.3f}  AP50 {r.ap50:.3f}  AP75 {r.ap75:.3f}  "
          f"AP_small {r.ap_small:.3f}  AP_medium {r.ap_medium:.3f}  AP_large {r.ap_large:.3f}")
    for name, ap in sorted(r.per_class.items(), key=lambda kv: -kv[1]):
        print(f"  {_printable(name):<20} AP {ap:.3f}")
    if r.unmatched_labels:
        print(f"note: {len(r.unmatched_labels)} model labels match no annotated category")
    return EXIT_OK


def _add_run(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("run", help="run the daemon",
                       description="Run the detection daemon. Without --config: the shipped "
                                   "model on the bundled sample clip, publishing on "
                                   f"{', '.join(PublishConfig.endpoints)}.")
    p.add_argument("--config", type=Path, help="YAML config (see config.example.yaml)")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    import faulthandler

    from edged._native import NativeOutputForwarder, limit_malloc_arenas
    from edged.service.log import under_journal
    from edged.service.signals import PendingSignals

    pending = PendingSignals.install()  # before the heavy imports below
    limit_malloc_arenas()  # before any thread starts
    from edged.config import default_config, load_config

    cfg = load_config(args.config) if args.config else default_config()
    level = "debug" if args.verbose else cfg.log_level
    logging.getLogger().setLevel(level.upper())
    # What OpenCV/FFmpeg/TFLite write on fds 1/2 becomes lines with a priority (a process of
    # its own writes them: edged._nativelog).
    with NativeOutputForwarder() as native:
        native.start(journal=under_journal(), level=level)
        # A crash in native code (a delegate's SIGSEGV) leaves the Python stacks in the log.
        faulthandler.enable(sys.stderr)
        from edged.service.daemon import Service

        return Service(cfg, args.config, pending=pending).run()


def _add_check_config(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("config", type=Path)
    p.set_defaults(func=_cmd_check_config)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from edged.config import load_config

    cfg = load_config(args.config)
    cams = ", ".join(f"{c.name!r} from {c.source}" for c in cfg.cameras)
    print(f"{args.config}: OK (camera{'s'[:len(cfg.cameras) > 1]} {cams}, model "
          f"{cfg.model}, publishing on {', '.join(cfg.publish.endpoints)})")
    return EXIT_OK


def _add_frigate_labelmap(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "frigate-labelmap", help="write the labelmap Frigate needs for edged's class ids",
        description="Frigate names the class ids edged answers its detector with through "
                    "model.labelmap_path: give it this file (its default labelmap numbers "
                    "COCO's 91 ids, where edged's bird, 14, would read 'bench').")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, default=None,
                     help=MODEL_HELP)
    src.add_argument("--config", type=Path, default=None,
                     help="the daemon's config file: its model")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                   help="write FILE instead of printing")
    p.add_argument("--model-names", action="store_true",
                   help="keep the model's own names (darknet's motorbike, aeroplane, sofa, "
                        "...) instead of the COCO names Frigate uses (motorcycle, airplane, "
                        "couch, ...)")
    p.set_defaults(func=_cmd_frigate_labelmap)


# darknet's coco.names (the shipped model's, VOC-era) -> the COCO names Frigate uses in its own
# labelmaps, objects.track and UI: with these, `objects: track: [motorcycle]` means what it says.
FRIGATE_NAMES = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch",
                 "pottedplant": "potted plant", "diningtable": "dining table", "tvmonitor": "tv"}


def _cmd_frigate_labelmap(args: argparse.Namespace) -> int:
    from edged import sidecar
    from edged.config import load_config
    from edged.models import DEFAULT_MODEL

    model = load_config(args.config).model if args.config else args.model or DEFAULT_MODEL
    labels = sidecar.load(model).labels
    if not args.model_names:
        labels = tuple(FRIGATE_NAMES.get(label, label) for label in labels)
    # Frigate's own indexed format ("<id> <label>" lines): a label is whatever follows the
    # first space, so labels with spaces ("traffic light") survive.
    text = "".join(f"{i} {label}\n" for i, label in enumerate(labels))
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(f"{args.output}: {len(labels)} labels of {model.name}; in Frigate's config: "
          f"model: labelmap_path: {args.output}")
    return EXIT_OK


def _add_sub(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("sub", help="print the messages a running edged publishes")
    p.add_argument("endpoints", nargs="*", default=list(PublishConfig.endpoints),
                   metavar="ENDPOINT", help=f"default {', '.join(PublishConfig.endpoints)}")
    p.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                   help="topic prefix, e.g. det/, status/balcony/ or process/ (repeatable; "
                        "default det/ and status/)")
    p.add_argument("--camera", action="append", default=[], metavar="NAME",
                   help="only this camera's messages (repeatable; with --topic, of those kinds)")
    p.add_argument("--count", type=_number(int, *SUB_COUNT), default=0,
                   help="stop after N messages (default 0: never)")
    p.add_argument("--timeout", type=_number(float, *SUB_TIMEOUT_S), default=0.0,
                   help="give up after this many seconds without a message (at most "
                        f"{SUB_TIMEOUT_S[1]:g}; default 0: wait forever)")
    p.add_argument("--json", action="store_true", help="print each payload as raw JSON")
    p.add_argument("--save", type=Path, metavar="DIR",
                   help="write the JPEG of each snap/ message to DIR/<camera>/<event>.jpg")
    p.add_argument("--server-key", type=Path, help="CURVE: the server's public certificate")
    p.add_argument("--client-cert", type=Path, help="CURVE: this client's secret certificate")
    p.set_defaults(func=_cmd_sub)


def _save_snap(directory: Path, msg: Any) -> None:
    """A snap's JPEG as DIR/<camera>/<event>.jpg, replaced whole. The names come from the
    publisher: only a camera name and an event id as edged makes them are used (anything else
    is skipped with a warning, as is a file that cannot be written: the next ones still
    are)."""
    from edged.config import valid_name
    from edged.core.track import EVENT_ID_RE

    if not valid_name(msg.camera) or not EVENT_ID_RE.fullmatch(msg.event):
        logger.warning("--save: skipping a snap named %s/%s (not an edged camera and event id)",
                       _printable(msg.camera[:80]), _printable(msg.event[:80]))
        return
    path = directory / msg.camera / f"{msg.event}.jpg"
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(msg.jpeg)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("--save: cannot write %s: %s", path, e.strerror or e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _cmd_sub(args: argparse.Namespace) -> int:
    from edged.api.client import (
        CountMessage,
        DetMessage,
        EventMessage,
        ProcessStatus,
        SnapMessage,
        Subscriber,
    )
    from edged.config import check_endpoint

    for ep in args.endpoints:
        problem = check_endpoint(ep)
        if problem:
            raise UsageError(f"{ep}: {problem}")
    from edged.api.client import topics_for

    try:
        topics = topics_for(args.topic or ["det/", "status/"], args.camera)
    except ValueError as e:
        raise UsageError(f"--camera: {e}") from None
    n = 0
    with Subscriber(args.endpoints, topics, args.server_key, args.client_cert) as sub:
        while args.count <= 0 or n < args.count:
            msg = sub.recv(args.timeout if args.timeout > 0 else None)
            if msg is None:
                raise EdgedError(f"no message within {args.timeout:g} s from "
                                 f"{', '.join(args.endpoints)}")
            n += 1
            if isinstance(msg, SnapMessage) and args.save is not None:
                _save_snap(args.save, msg)
            if args.json:
                print(json.dumps(msg.raw), flush=True)
            elif isinstance(msg, DetMessage):
                found = ", ".join(
                    f"{_printable(d.label)} {d.score:.2f} at ({d.box[0]:.0f},{d.box[1]:.0f})-"
                    f"({d.box[2]:.0f},{d.box[3]:.0f})" for d in msg.detections) or "-"
                print(f"{_printable(msg.topic)} #{msg.seq} frame {msg.frame_seq} "
                      f"{msg.latency_ms.total:.1f} ms: {found}", flush=True)
            elif isinstance(msg, EventMessage):
                zones = f" in {', '.join(_printable(z) for z in msg.zones)}" if msg.zones else ""
                why = f" ({_printable(msg.end_reason)})" if msg.end_reason else ""
                still = ", stationary" if msg.stationary else ""
                print(f"{_printable(msg.topic)} {_printable(msg.phase)}{why} "
                      f"{_printable(msg.label)} {_printable(msg.id)}{zones}: "
                      f"{msg.duration_s:.0f} s{still}, best {msg.top_score:.2f}", flush=True)
            elif isinstance(msg, CountMessage):
                here = ", ".join(f"{n} {_printable(lb)}" for lb, n in
                                 msg.occupancy.objects.items() if n) or "nothing"
                zones = "".join(f"; {_printable(z)}: " + (", ".join(
                    f"{n} {_printable(lb)}" for lb, n in c.items() if n) or "0")
                    for z, c in msg.occupancy.zones.items())
                print(f"{_printable(msg.topic)} {here}{zones}", flush=True)
            elif isinstance(msg, SnapMessage):
                print(f"{_printable(msg.topic)} {_printable(msg.label)} {msg.score:.2f} "
                      f"{_printable(msg.event)}: {msg.width}x{msg.height} JPEG, "
                      f"{len(msg.jpeg)} bytes", flush=True)
            elif isinstance(msg, ProcessStatus):
                fb = (f" (fallback: {_printable(msg.fallback_reason)})"
                      if msg.fallback_reason else "")
                cams = ", ".join(f"{_printable(k)} {_printable(v)}"
                                 for k, v in msg.cameras.items())
                print(f"{_printable(msg.topic)} {_printable(msg.state)} on "
                      f"{_printable(msg.backend)}{fb}: {msg.fps_out:.1f} fps out, load "
                      f"{msg.inference_load:.0%}; {cams}", flush=True)
            else:
                fb = (f" (fallback: {_printable(msg.fallback_reason)})"
                      if msg.fallback_reason else "")
                print(f"{_printable(msg.topic)} {_printable(msg.state)} on "
                      f"{_printable(msg.backend)}{fb}: {msg.fps_in:.1f} fps in, "
                      f"{msg.fps_out:.1f} fps out, {msg.frames_dropped} dropped", flush=True)
    return EXIT_OK


def _add_events(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "events", help="list, export, summarize or plot the event history",
        description="The events edged recorded, each in its latest state; times are local. "
                    "--since and --until take a duration ago (90m, 24h, 7d) or a date "
                    "(2026-11-22, 2026-11-22T07:00); an event present at any time in between "
                    "is listed.")
    p.add_argument("--db", type=Path, default=None,
                   help="the history file (default: the one the daemon writes, in its "
                        "systemd StateDirectory)")
    p.add_argument("--since", metavar="WHEN", help="e.g. 24h or 2026-11-22")
    p.add_argument("--until", metavar="WHEN")
    p.add_argument("--camera", help="only this camera's events")
    p.add_argument("--label", help="only this label (bird, person, ...)")
    p.add_argument("--zone", help="only events that entered this zone")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")
    p.add_argument("--summary", choices=("hour", "day"),
                   help="visits and total dwell per local hour or day, camera and label")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw visits and time present per hour (or --summary day) to a PNG "
                        "(needs matplotlib: pip install 'edged[plot]')")
    p.set_defaults(func=_cmd_events)


def _cmd_events(args: argparse.Namespace) -> int:
    import sqlite3
    import time

    from edged.api import history
    from edged.errors import first_line
    from edged.tools import events as ev

    now = time.time_ns()
    since = ev.parse_when(args.since, now, "--since") if args.since else None
    until = ev.parse_when(args.until, now, "--until") if args.until else None
    db = args.db or history.DEFAULT_DB
    conn = history.open_history(db, readonly=True)
    try:
        try:
            found = history.events(conn, since, until, args.camera, args.label, args.zone)
        except sqlite3.Error as e:
            raise history.HistoryError(f"event history {db}: {first_line(e)}") from None
    finally:
        conn.close()
    if args.summary or args.plot:
        rows = history.summarize(found, args.summary or "hour", since, until)
        if args.plot:
            what = " ".join([f"per {args.summary or 'hour'}",
                             *(f"{k} {v}" for k, v in (("camera", args.camera),
                                                       ("label", args.label),
                                                       ("zone", args.zone)) if v)])
            ev.plot_visits(rows, args.plot, _printable(what))
            print(f"{_printable(str(args.plot))}: {sum(r.visits for r in rows)} visits in "
                  f"{len({r.bucket for r in rows})} {args.summary or 'hour'}s")
            if not args.summary:
                return EXIT_OK
        if args.json:
            ev.write_json((r._asdict() for r in rows), sys.stdout)
        elif args.csv:
            ev.write_summary_csv(rows, sys.stdout)
        else:
            for line in ev.summary_lines(rows):
                print(_printable(line))
        return EXIT_OK
    if args.json:
        ev.write_json(found, sys.stdout)
    elif args.csv:
        ev.write_csv(found, sys.stdout)
    else:
        for event in found:
            print(_printable(ev.event_line(event)))
    return EXIT_OK


def build_parser() -> _Parser:
    parser = _Parser(prog="edged", description="On-device object detection daemon.")
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_sub(sub)
    _add_check_config(sub)
    _add_export(sub)
    _add_detect(sub)
    _add_bench(sub)
    _add_eval(sub)
    _add_events(sub)
    _add_frigate_labelmap(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # OpenCV reads its image bound once, when it loads: set before any command imports cv2.
    # The user's own setting wins.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli_logging(args.verbose)
    try:
        code: int = args.func(args)
        return code
    except EdgedError as e:
        logger.debug("error details", exc_info=True)
        print(f"edged: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edged: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line for the user, the traceback with -v
        logger.debug("unexpected error", exc_info=True)
        print(f"edged: internal error: {type(e).__name__}: {e} (run with -v for details)",
              file=sys.stderr)
        return EXIT_RUNTIME
