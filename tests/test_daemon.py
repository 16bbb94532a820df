"""The daemon as users run it: `edged run` subprocesses, real clips, a real ffmpeg HTTP camera,
real PUB/SUB sockets on loopback, real signals."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from edged.media import SAMPLE_CLIP
from edged.schema import load_schema
from tests.daemon_util import Daemon, Listener, dets, free_port, statuses, write_config

VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def _config(tmp: Path, port: int, **over: dict) -> Path:
    camera = {"name": "balcony", "source": str(SAMPLE_CLIP), "loop": True, "realtime": True}
    camera.update(over.pop("camera", {}))
    publish = {"endpoints": [f"tcp://127.0.0.1:{port}"]}
    publish.update(over.pop("publish", {}))
    return write_config(tmp / "edged.yaml", camera=camera, publish=publish, **over)


def _running(item: tuple[str, dict, int]) -> bool:
    return item[0].startswith("status/") and item[1]["state"] == "running"


def test_end_to_end_messages_schema_seq_birds_status(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port, inference={"threads": 2})
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(lambda m: m[0] == "det/balcony", 60, "the first det message")
        sub.poll_for(7.0)  # more than one pass of the 5.3 s clip
        code, _ = d.stop()
        sub.poll_for(0.5)  # what was sent while stopping
    assert code == 0, d.stderr
    assert "Traceback" not in d.stderr
    for topic, msg, _ in sub.messages:
        VALIDATOR.validate(msg)
        assert topic == f"{'det' if msg['kind'] == 'detections' else 'status'}/balcony"
    det = dets(sub)
    assert len(det) > 100
    seqs = [m["seq"] for m in det]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gaps at 25 fps
    labels = {d["label"] for m in det for d in m["detections"]}
    assert "bird" in labels
    st = [m for m in statuses(sub) if m["state"] == "running"]
    assert len(st) >= 5  # every second
    assert st[-1]["backend"] == "cpu" and st[-1]["model"] == "yolov3-tiny-416"
    assert 20 <= st[-1]["fps_in"] <= 30 and 20 <= st[-1]["fps_out"] <= 30
    assert set(st[-1]["latency_ms"]) == {"preprocess", "inference", "postprocess", "total"}
    assert statuses(sub)[-1]["state"] == "stopping"  # the last word before exit


def test_default_run_without_config(tmp_path: Path) -> None:
    """The README's run command: shipped model, bundled clip, tcp://127.0.0.1:5556."""
    with Daemon(tmp_path, None) as d, Listener("tcp://127.0.0.1:5556") as sub:
        _, msg, _ = sub.wait_until(lambda m: m[0] == "det/sample", 60, "a det/sample message")
        VALIDATOR.validate(msg)
        assert d.stop()[0] == 0


def test_sigterm_at_full_speed_exits_within_2s(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port, camera={"realtime": False})
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(lambda m: m[0].startswith("det/"), 60, "detections")
        sub.poll_for(1.0)
        assert len(dets(sub)) > 30  # unthrottled: well above the clip's 25 fps
        code, took = d.stop()
    assert code == 0, d.stderr
    assert took < 2.0, f"stop took {took:.2f} s"


def test_sighup_applies_thresholds_without_interrupting(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port, detection={"conf_threshold": 0.05})
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(_running, 60, "running")
        sub.poll_for(2.0)
        assert any(det["score"] < 0.2 for m in dets(sub) for det in m["detections"])
        _config(tmp_path, port, detection={"conf_threshold": 0.2, "classes": ["bird"]})
        d.signal(signal.SIGHUP)
        sub.wait_until(lambda m: m[0].startswith("status/") and m[1]["state"] == "reloading",
                       10, "a reloading status")
        sub.wait_until(_running, 10, "running again")
        mark = len(sub.messages)
        sub.poll_for(6.0)
        code, _ = d.stop()
    assert code == 0
    after = [m for t, m, _ in sub.messages[mark:] if t.startswith("det/")]
    found = [det for m in after for det in m["detections"]]
    assert found and all(det["label"] == "bird" and det["score"] >= 0.2 for det in found)
    seqs = [m["seq"] for m in dets(sub)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the stream never skipped
    assert "reload: applied" in d.stderr


def test_sighup_with_invalid_config_keeps_running(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(_running, 60, "running")
        cfg.write_text(cfg.read_text() + "\ndetection: {conf_threshold: 7}\n")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload rejected" not in d.stderr and time.monotonic() < deadline:
            time.sleep(0.1)
        mark = len(sub.messages)
        sub.poll_for(2.0)
        assert d.proc.poll() is None
        assert len([m for t, m, _ in sub.messages[mark:] if t.startswith("det/")]) > 20
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


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt install ffmpeg)")
def test_http_source_vanishes_and_returns_three_times(tmp_path: Path) -> None:
    cam_port, pub_port = free_port(), free_port()
    cfg = _config(tmp_path, pub_port, camera={
        "source": f"http://127.0.0.1:{cam_port}/live.ts", "stall_timeout_s": 1.0,
        "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5})
    server = _ffmpeg_server(cam_port)
    try:
        with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{pub_port}") as sub:
            sub.wait_until(lambda m: m[0].startswith("det/"), 60, "detections from the stream")
            for cycle in range(3):
                server.kill()
                server.wait()
                sub.wait_until(lambda m: m[0].startswith("status/")
                               and m[1]["state"] == "source_down", 10,
                               f"source_down (cycle {cycle})")
                time.sleep(2.0)  # gone for a while
                assert d.proc.poll() is None
                server = _ffmpeg_server(cam_port)
                back = time.monotonic()
                sub.wait_until(lambda m: m[0].startswith("det/"), 10,
                               f"detections again (cycle {cycle})")
                resumed = time.monotonic() - back
                assert resumed <= 3.0, f"cycle {cycle}: resumed after {resumed:.2f} s"
            code, _ = d.stop()
        assert code == 0, d.stderr
        st = statuses(sub)
        assert st[-2]["source"]["reconnects"] >= 3
        assert any(s["state"] == "source_down" and s["source"]["reason"] for s in st)
    finally:
        server.kill()
        server.wait()
