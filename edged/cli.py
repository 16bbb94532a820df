"""The ``edged`` command. The only module that prints for humans or decides the exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edged import __version__
from edged.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EdgedError
from edged.log import setup_cli_logging

logger = logging.getLogger("edged")


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
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the report")
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
            print(line)
    for note in res.notes:
        print(f"note: {note}")
    return EXIT_OK


def build_parser() -> _Parser:
    parser = _Parser(prog="edged", description="On-device object detection daemon.")
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
