"""A real RTSP camera on loopback: GStreamer's RTSP server serving a clip, looped, as H.264.

Run it with Debian's interpreter (it needs python3-gi, which the venv does not have)::

    /usr/bin/python3 tests/rtsp_server.py CLIP [--port 0] [--path /live]

Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good (qtdemux, rtph264pay) gstreamer1.0-plugins-bad (h264parse); a clip
that is not H.264 is re-encoded once at start with x264enc (gstreamer1.0-plugins-ugly) after
decodebin (gstreamer1.0-libav for most codecs).

The clip is read once into memory as H.264 access units (stream copy when it is H.264 already)
and every client gets its own session that starts at the clip's first key frame and loops it
forever with continuous timestamps, paced in real time by the pipeline clock, like a camera.
With ``--port 0`` the kernel picks a free port. When the server listens it prints one line,
``READY rtsp://127.0.0.1:PORT/live``, and flushes stdout; it runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402

H264_CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"


@dataclass(frozen=True)
class AccessUnit:
    data: bytes
    pts: int  # ns from the clip's start
    dts: int
    duration: int
    delta: bool  # not a key frame


def _load(clip: str) -> list[AccessUnit]:
    """The clip as H.264 access units (byte-stream, SPS/PPS before every key frame)."""
    loc = GLib.strescape(clip)
    copy = (f'filesrc location="{loc}" ! parsebin ! h264parse config-interval=-1 ! '
            f"{H264_CAPS} ! appsink name=sink sync=false")
    encode = (f'filesrc location="{loc}" ! decodebin ! videoconvert ! video/x-raw,format=I420 ! '
              "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bframes=0 ! "
              f"h264parse config-interval=-1 ! {H264_CAPS} ! appsink name=sink sync=false")
    for desc in (copy, encode):
        units = _pull(desc)
        if units:
            return units
    raise SystemExit(f"rtsp_server: cannot read {clip} as video")


def _pull(desc: str) -> list[AccessUnit]:
    try:
        pipe = Gst.parse_launch(desc)
    except GLib.Error:
        return []
    sink = pipe.get_by_name("sink")
    assert isinstance(sink, GstApp.AppSink)
    pipe.set_state(Gst.State.PLAYING)
    bus = pipe.get_bus()
    raw: list[tuple[bytes, int, int, int, bool]] = []
    failed = False
    while True:
        sample = sink.try_pull_sample(Gst.SECOND // 5)
        if sample is None:
            # the end, an error (e.g. not H.264: the stream copy cannot link) or still waiting
            failed = bus.pop_filtered(Gst.MessageType.ERROR) is not None
            if failed or sink.is_eos():
                break
            continue
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            continue
        data = bytes(info.data)
        buf.unmap(info)
        pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else buf.dts
        dts = buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else pts
        raw.append((data, pts, dts, buf.duration,
                    bool(buf.get_flags() & Gst.BufferFlags.DELTA_UNIT)))
    pipe.set_state(Gst.State.NULL)
    if failed or not raw or raw[0][4] or any(r[1] == Gst.CLOCK_TIME_NONE for r in raw):
        return []
    # Timestamps from 0 (B-frames: the first DTS may lie before the first PTS); a missing
    # duration (the last frame, or a muxer that did not store them) is the frame period.
    t0 = min(min(r[1], r[2]) for r in raw)
    period = next((r[3] for r in raw if r[3] != Gst.CLOCK_TIME_NONE), 40_000_000)
    return [AccessUnit(data, pts - t0, dts - t0,
                       period if dur == Gst.CLOCK_TIME_NONE else dur, delta)
            for data, pts, dts, dur, delta in raw]


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """One media per client (not shared): each viewer starts on a key frame, like a camera's
    stream after its first IDR request."""

    def __init__(self, units: list[AccessUnit]) -> None:
        super().__init__()
        self.units = units
        self.loop_ns = max(max(u.pts, u.dts) + u.duration for u in units)
        self.set_shared(False)
        self.set_launch(f"( appsrc name=src is-live=true format=time caps={H264_CAPS} ! "
                        "h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )")
        self.connect("media-configure", self._configure)

    def _configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_child_by_name("src")
        state = {"i": 0}

        def need_data(appsrc: GstApp.AppSrc, _length: int) -> None:
            i = state["i"]
            state["i"] = i + 1
            unit = self.units[i % len(self.units)]
            offset = (i // len(self.units)) * self.loop_ns
            buf = Gst.Buffer.new_wrapped(unit.data)
            buf.pts, buf.dts, buf.duration = unit.pts + offset, unit.dts + offset, unit.duration
            if unit.delta:
                buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
            appsrc.push_buffer(buf)

        src.connect("need-data", need_data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--path", default="/live")
    args = ap.parse_args()
    Gst.init(None)
    units = _load(args.clip)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, LoopingFactory(units))
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
