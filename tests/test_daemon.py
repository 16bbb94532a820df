"""The daemon as users run it: `edged run` subprocesses, real clips, a real ffmpeg HTTP camera,
real PUB/SUB sockets on loopback, real signals."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from edged.api.schema import load_schema
from edged.media import SAMPLE_CLIP, SAMPLE_LABELS
from tests.daemon_util import (
    Daemon,
    Listener,
    dets,
    free_port,
    is_det,
    state_is,
    statuses,
    write_config,
)
from tests.timing import Speed, sample_clip

VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def _config(tmp: Path, port: int, **over: dict) -> Path:
    camera = {"name": "balcony", "source": str(SAMPLE_CLIP), "loop": True, "realtime": True}
    camera.update(over.pop("camera", {}))
    publish = {"endpoints": [f"tcp://127.0.0.1:{port}"]}
    publish.update(over.pop("publish", {}))
    return write_config(tmp / "edged.yaml", camera=camera, publish=publish, **over)


def _running(item: tuple[str, dict, int]) -> bool:
    return item[0].startswith("status/") and item[1]["state"] == "running"


def test_end_to_end_messages_schema_seq_birds_status(tmp_path: Path, speed: Speed) -> None:
    clip = sample_clip()
    port = free_port()
    cfg = _config(tmp_path, port, inference={"threads": 2})
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        # A frame from the clip's second pass: the file loops (capture seq counts on).
        sub.wait_until(lambda m: m[0] == "det/balcony/" and m[1]["frame_seq"] > clip.frames,
                       speed.start_deadline(base_s=clip.duration_s), "the clip's second pass")
        sub.wait_count(state_is("running"), 3, speed.deadline(base_s=3.0),
                       "periodic running statuses")
        code, _ = d.stop()
        sub.wait_until(state_is("stopping"), speed.deadline(), "the stopping status")
        sub.drain()  # anything sent after it
    assert code == 0, d.stderr
    assert "Traceback" not in d.stderr
    for topic, msg, _ in sub.messages:
        VALIDATOR.validate(msg)
        assert topic == f"{'det' if msg['kind'] == 'detections' else 'status'}/balcony/"
    det = dets(sub)
    seqs = [m["seq"] for m in det]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gaps
    # realtime: the file is paced like a camera, never played faster than its own rate
    # (an upper bound: a slower machine drops frames, it cannot make this fail)
    span_s = (det[-1]["ts_ns"] - det[0]["ts_ns"]) / 1e9
    assert span_s > clip.duration_s * 0.9
    assert (det[-1]["frame_seq"] - det[0]["frame_seq"]) / span_s <= clip.fps * 1.1
    labels = {d["label"] for m in det for d in m["detections"]}
    assert labels == SAMPLE_LABELS  # what OpenCV's darknet reference sees (test_demo_clip.py)
    st = [m for m in statuses(sub) if m["state"] == "running"]
    assert len(st) >= 3  # periodic
    assert st[-1]["backend"] == "cpu" and st[-1]["model"] == "yolov3-tiny-416"
    assert all(s["fps_in"] >= 0 and s["fps_out"] >= 0 for s in st)  # rates are reported ...
    assert any(s["fps_in"] > 0 for s in st) and any(s["fps_out"] > 0 for s in st)  # ... and move
    assert set(st[-1]["latency_ms"]) == {"preprocess", "inference", "postprocess", "total"}
    assert statuses(sub)[-1]["state"] == "stopping"  # the last word before exit


def _wait_port_free(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"port {port} stays in use by another process: this test runs "
                                "edged on its default endpoint")
        time.sleep(0.2)  # another process holds it (e.g. a parallel test run): poll


def test_default_run_without_config(tmp_path: Path, speed: Speed) -> None:
    """The README's run command: shipped model, bundled clip, tcp://127.0.0.1:5556."""
    _wait_port_free(5556, 60)
    with Daemon(tmp_path, None) as d, Listener("tcp://127.0.0.1:5556") as sub:
        d.wait_stderr("publishing on tcp://127.0.0.1:5556", speed.start_deadline())
        _, msg, _ = sub.wait_until(lambda m: m[0] == "det/sample/", speed.start_deadline(),
                                   "a det/sample message")
        VALIDATOR.validate(msg)
        assert d.proc.poll() is None, d.stderr  # ours, not another process's on that port
        assert d.stop()[0] == 0


STOP_BOUND_S = 2.0  # issue requirement: SIGTERM -> exit 0 within 2 s (signal to exit)


def test_sigterm_at_full_speed_exits_within_2s(tmp_path: Path, speed: Speed) -> None:
    port = free_port()
    cfg = _config(tmp_path, port, camera={"realtime": False})  # unpaced: inference never idles
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_count(is_det, 10, speed.start_deadline(n_frames=10), "det messages")
        code, took = d.stop()
    assert code == 0, d.stderr
    assert took < STOP_BOUND_S, f"stop took {took:.2f} s"


def test_sighup_applies_thresholds_without_interrupting(tmp_path: Path, speed: Speed) -> None:
    clip = sample_clip()
    port = free_port()
    # 0.01: boxes under 0.2 on most frames of the clip (at 0.05 only on 9 of its 150)
    cfg = _config(tmp_path, port, detection={"conf_threshold": 0.01})
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(lambda m: is_det(m) and any(det["score"] < 0.2
                                                   for det in m[1]["detections"]),
                       speed.start_deadline(n_frames=clip.frames, paced_fps=clip.fps),
                       "a detection below 0.2")
        _config(tmp_path, port, detection={"conf_threshold": 0.2, "classes": ["bird"]})
        d.signal(signal.SIGHUP)
        sub.wait_until(state_is("reloading"), speed.deadline(base_s=1.0), "a reloading status")
        _, st, _ = sub.wait_until(_running, speed.deadline(base_s=1.0), "running again")
        # The new thresholds apply from the next frame boundary: every frame that started after
        # the reload. One frame may have been in flight; its seq is frames_out (seq counts every
        # frame here, empty ones included), so the frames after it are filtered for sure.
        def filtered(m: tuple[str, dict, int]) -> bool:
            return is_det(m) and m[1]["seq"] > st["frames_out"]

        sub.wait_count(lambda m: filtered(m) and bool(m[1]["detections"]), 3,
                       speed.deadline(n_frames=2 * clip.frames, paced_fps=clip.fps),
                       "det messages with detections after the reload")
        after = [m for t, m, r in sub.messages if filtered((t, m, r))]
        # The allow-list: the clip's only object is a bird (found at 0.01 on every frame), so
        # allowing only "person" must leave every frame empty.
        _config(tmp_path, port, detection={"conf_threshold": 0.01, "classes": ["person"]})
        d.signal(signal.SIGHUP)
        sub.wait_until(state_is("reloading"), speed.deadline(base_s=1.0), "reloading (2)")
        _, st2, _ = sub.wait_until(_running, speed.deadline(base_s=1.0), "running again (2)")
        mark = len(sub.messages)
        persons = sub.wait_count(lambda m: is_det(m) and m[1]["seq"] > st2["frames_out"], 10,
                                 speed.deadline(n_frames=10, paced_fps=clip.fps),
                                 "det messages after the class allow-list changed", since=mark)
        code, _ = d.stop()
    assert code == 0
    found = [det for m in after for det in m["detections"]]
    assert found and all(det["label"] == "bird" and det["score"] >= 0.2 for det in found)
    assert all(not m["detections"] for m in persons), "classes: [person] let others by"
    seqs = [m["seq"] for m in dets(sub)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the stream never skipped
    assert "reload: applied" in d.stderr


def test_sighup_with_invalid_config_keeps_running(tmp_path: Path, speed: Speed) -> None:
    clip = sample_clip()
    port = free_port()
    cfg = _config(tmp_path, port)
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(_running, speed.start_deadline(), "running")
        cfg.write_text(cfg.read_text() + "\ndetection: {conf_threshold: 7}\n")
        d.signal(signal.SIGHUP)
        d.wait_stderr("reload rejected", speed.deadline(base_s=1.0))
        mark = len(sub.messages)
        sub.wait_count(is_det, 20, speed.deadline(n_frames=20, paced_fps=clip.fps),
                       "det messages after the rejected reload", since=mark)
        assert d.proc.poll() is None
        code, _ = d.stop()
    assert code == 0
    rejected = [ln for ln in d.stderr.splitlines() if "reload rejected" in ln]
    assert len(rejected) == 1 and "detection.conf_threshold" in rejected[0]
    assert "Traceback" not in d.stderr


# --- a real network camera that goes away ----------------------------------------------------

def _ffmpeg_server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i",
         str(SAMPLE_CLIP), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
         "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


RESUME_BOUND_S = 3.0  # issue requirement: detections resume within 3 s of the camera's return


def _wait_listening(port: int, timeout_s: float) -> None:
    """Until something listens on 127.0.0.1:port, or has already accepted its client there
    (read from /proc: connecting would use up ffmpeg's single `-listen 1` client, and ffmpeg
    closes its listening socket as soon as edged connects, which can be within one poll)."""
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    f = line.split()
                    if f[1].endswith(want) and f[3] in ("0A", "01"):  # LISTEN, ESTABLISHED
                        return
        time.sleep(0.01)
    raise AssertionError(f"nothing listens on port {port} after {timeout_s:.0f} s")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt install ffmpeg)")
def test_http_source_vanishes_and_returns_three_times(tmp_path: Path, speed: Speed) -> None:
    cam_port, pub_port = free_port(), free_port()
    cfg = _config(tmp_path, pub_port, camera={
        "source": f"http://127.0.0.1:{cam_port}/live.ts", "stall_timeout_s": 1.0,
        "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5})
    server = _ffmpeg_server(cam_port)
    resumed: list[float] = []
    delivered: list[float] = []
    try:
        with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{pub_port}") as sub:
            sub.wait_until(is_det, speed.start_deadline(base_s=2.0),
                           "detections from the stream")
            for cycle in range(3):
                server.kill()
                server.wait()
                _, down, _ = sub.wait_until(state_is("source_down"),
                                            speed.deadline(base_s=1.0 + 1.0),  # stall + status
                                            f"source_down (cycle {cycle})")
                # gone for a while: the daemon keeps trying (two more failed attempts)
                sub.wait_until(lambda m, n=down["source"]["reconnects"]: m[0].startswith(
                               "status/") and m[1]["source"]["reconnects"] >= n + 2,
                               speed.deadline(base_s=2 * (1.0 + 0.5) + 1.0),
                               f"reconnect attempts while down (cycle {cycle})")
                assert d.proc.poll() is None
                server = _ffmpeg_server(cam_port)
                # The camera is back when it listens (ffmpeg's own start-up is not edged's).
                _wait_listening(cam_port, speed.deadline(base_s=10.0))
                back_ns = time.time_ns()
                _, det, got_ns = sub.wait_until(
                    lambda m, t=back_ns: is_det(m) and m[1]["ts_ns"] >= t,
                    speed.deadline(n_frames=1, base_s=0.5 + 1.0 + 1.0),
                    f"detections again (cycle {cycle})")
                # To the grab of the first frame after its return: reconnecting is the
                # requirement; that frame's detections follow one inference later (printed).
                resumed.append((det["ts_ns"] - back_ns) / 1e9)
                delivered.append((got_ns - back_ns) / 1e9)
            code, _ = d.stop()
        assert code == 0, d.stderr
        st = statuses(sub)
        assert st[-2]["source"]["reconnects"] >= 3
        assert any(s["state"] == "source_down" and s["source"]["reason"] for s in st)
        print(f"\nHTTP camera back -> first frame grabbed: {resumed} s; -> its detections at "
              f"a subscriber: {delivered} s")
        assert max(resumed) <= RESUME_BOUND_S, f"resumed after {resumed} s"
    finally:
        server.kill()
        server.wait()
