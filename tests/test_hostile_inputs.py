"""Hostile input found by the second adversarial pass (issue 10, classes #4/#5 and the lying
status #11): model sidecars get the bounds the config got, values JSON cannot carry never kill
the publisher, strings that end up in every message are bounded, a config that is a FIFO does
not hang, and the status never says "running" before a frame. Each case failed before its fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from edged.api.messages import Latency
from edged.cli import EXIT_USAGE
from edged.config import PublishConfig
from edged.models import DEFAULT_MODEL
from edged.pipeline.publish import Publisher
from tests.conftest import one_line_error, run_edged
from tests.daemon_util import Daemon, Listener, free_port, write_config
from tests.test_messages import DET, STATUS
from tests.timing import Speed

MAX_LINE = 1000  # "one line": bounded, whatever the input


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A private copy of the shipped model: its sidecar is the one the cases corrupt."""
    out = tmp_path / "models"
    shutil.copytree(DEFAULT_MODEL.parent, out,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return out / DEFAULT_MODEL.name


def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx",'
             '"xxxxxxxx","xxxxxxxx","xxxxxxxx"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nlabels: *a{levels - 1}\n"


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


SIDECAR_CASES = {
    # name: (how to corrupt the sidecar text, what the one line says)
    "alias bomb": (lambda t: t + _alias_bomb(8).replace("labels:", "vela:"), "expands to more"),
    "non-UTF-8": (lambda t: t.replace("name:", "# caf\udce9\nname:", 1), "not UTF-8"),
    "deep nesting": (lambda t: t + "vela: " + "[" * 20000 + "]" * 20000 + "\n",
                     "nested too deeply"),
    "NaN scale": (lambda t: _replace(t, "scale_x_y: 1.0", "scale_x_y: .nan"), "scale_x_y"),
    "bad mask": (lambda t: t.replace("mask: [3, 4, 5]", "mask: [x]", 1), "mask"),
    "one channel": (lambda t: t.replace("channels: 3", "channels: 1", 1), "input.channels"),
    "1 MB name": (lambda t: t.replace("name: yolov3-tiny-416", "name: " + "n" * 1_100_000, 1),
                  "larger than 1024 KiB"),
    "long name": (lambda t: t.replace("name: yolov3-tiny-416", "name: " + "n" * 500, 1),
                  "name: expected a printable string of 1-128"),
    "control chars in a label": (lambda t: t.replace("- bird", '- "bi\\x1b[2Jrd"', 1),
                                 "labels[14]"),
    "100k labels": (lambda t: t.replace("classes: 80", "classes: 100000", 1), "head.classes"),
    "5000-digit integer": (lambda t: t.replace("classes: 80", "classes: " + "9" * 5000, 1),
                           "a value edged cannot read"),
}


@pytest.mark.parametrize("case", list(SIDECAR_CASES))
def test_hostile_sidecar_is_one_bounded_line(case: str, models: Path, tmp_path: Path) -> None:
    corrupt, says = SIDECAR_CASES[case]
    text = models.read_text()
    bad = corrupt(text)
    assert bad != text, "the case did not change the sidecar"
    models.write_bytes(bad.encode("utf-8", "surrogateescape"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {models}\n")
    t0 = time.monotonic()
    proc = run_edged("check-config", str(cfg), timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    line = one_line_error(proc)
    assert says in line and len(line) < MAX_LINE, line[:2000]
    assert took < 60, f"{took:.0f} s"  # a guard against the unbounded: the bomb took minutes


def test_model_file_larger_than_any_board_model_is_refused(models: Path) -> None:
    """A 20 GB file given as the model was read whole; a sparse 600 MiB one shows it."""
    tflite = models.parent / "yolov3-tiny-416_int8.tflite"
    with tflite.open("r+b") as f:
        f.truncate(600 << 20)
    proc = run_edged("detect", "--model", str(models), str(DEFAULT_MODEL.parent / "x.jpg"))
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    assert "larger than 512 MiB" in one_line_error(proc)


def test_config_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """`check-config FIFO` blocked in open() for ever (and `run` ignored SIGTERM)."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc = run_edged("check-config", str(fifo), timeout=30)
    assert proc.returncode == EXIT_USAGE
    assert "is not a regular file" in one_line_error(proc)


@pytest.mark.parametrize(("text", "says"), [
    ("camera: {width: " + "9" * 5000 + "}\n", "a value edged cannot read: Exceeds the limit"),
    ("camera: {name: 2024-13-45}\n", "a value edged cannot read: month must be in 1..12"),
])
def test_values_yaml_cannot_construct_are_one_line(text: str, says: str, tmp_path: Path) -> None:
    """A 5000-digit integer (Python's int() limit) or an impossible date raised ValueError
    out of the YAML loader: "internal error" for check-config, a traceback on SIGHUP."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    proc = run_edged("check-config", str(cfg))
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    line = one_line_error(proc)
    assert says in line and len(line) < MAX_LINE, line[:2000]


@pytest.mark.parametrize(("section", "values", "says"), [
    ("camera", {"source": "rtsp://h/" + "a" * 900_000}, "camera.source: longer than 4096"),
    ("camera", {"n" * 900_000: 1}, "unknown key"),
    ("publish", {"endpoints": ["ipc:///tmp/" + "p" * 200]}, "107 bytes at most"),
])
def test_oversized_config_strings_are_refused(section: str, values: dict[str, object],
                                              says: str, tmp_path: Path) -> None:
    """A 900 KB camera.source went into every status message (1 GB for an idle subscriber);
    a 1.8 MB unknown key was echoed whole; an ipc path over 107 bytes passed check-config."""
    cfg = write_config(tmp_path / "c.yaml", **{section: values})
    proc = run_edged("check-config", str(cfg))
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    line = one_line_error(proc)
    assert says in line and len(line) < MAX_LINE, line[:2000]


def test_a_message_json_cannot_carry_never_kills_the_publisher() -> None:
    """A NaN from a broken model made encode() raise inside the publisher thread: it died,
    nothing was published again, the status stayed "running" and SIGTERM hung in term()."""
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    pub = Publisher(PublishConfig(endpoints=(ep,), status_interval_s=3600), lambda: [STATUS])
    pub.bind()
    pub.start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"det/")
    sub.connect(ep)
    try:
        deadline = time.monotonic() + 30
        while not sub.poll(100):  # the slow-joiner: publish until the subscription is in
            assert time.monotonic() < deadline
            pub.submit(dataclasses.replace(DET, seq=100))
        while sub.poll(200):
            sub.recv_multipart()
        nan = Latency(float("nan"), 1.0, 1.0, 1.0)
        pub.submit(dataclasses.replace(DET, seq=0, latency_ms=nan))
        pub.submit(dataclasses.replace(DET, seq=1))
        assert sub.poll(30_000), "nothing published after the NaN message"
        assert json.loads(sub.recv_multipart()[1])["seq"] == 1
        assert pub.is_alive() and pub.unencodable == 1
    finally:
        sub.close(linger=0)
        ctx.term()
        pub.stop()
        stopped = threading.Event()
        threading.Thread(target=lambda: pub.join(5) and stopped.set(), daemon=True).start()
        assert stopped.wait(10), "the publisher did not stop"


@pytest.fixture
def silent_camera() -> Iterator[str]:
    """A TCP server that accepts and never says a word: a camera hung in its handshake."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/stream.mjpg"
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        srv.close()


def test_status_is_not_running_before_a_frame(tmp_path: Path, speed: Speed,
                                              silent_camera: str) -> None:
    """A camera still opening (up to stall_timeout_s, which may be an hour) was reported
    `running` with 0 frames and no reason; SIGTERM then spent its whole budget waiting for the
    capture thread stuck in FFmpeg's open."""
    port = free_port()
    cfg = write_config(tmp_path / "c.yaml",
                       camera={"name": "cam", "source": silent_camera, "stall_timeout_s": 600},
                       publish={"endpoints": [f"tcp://127.0.0.1:{port}"],
                                "status_interval_s": 0.2})
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        st = sub.wait_until(lambda m: m[0].startswith("status/") and m[1]["state"] not in
                            ("starting", "warming_up"), speed.start_deadline(),
                            "a status after the start")[1]
        sub.poll_for(1.0)
        code, took = d.stop()
    states = {m["state"] for t, m, _ in sub.messages if t.startswith("status/")}
    assert "running" not in states, states
    assert st["state"] == "source_down" and st["source"]["reason"], st
    assert st["frames_in"] == 0
    assert code == 0 and took < 2.0, (code, took)


def test_camera_password_is_never_published_or_logged(tmp_path: Path, speed: Speed) -> None:
    """`rtsp://user:pw@...` went verbatim into every status message (to every subscriber) and
    into the journal."""
    port, cam = free_port(), free_port()  # nothing listens on the camera's port
    source = f"rtsp://viewer:s3cr3t-pw@127.0.0.1:{cam}/stream"
    cfg = write_config(tmp_path / "c.yaml",
                       camera={"name": "cam", "source": source, "reconnect_initial_s": 0.1,
                               "reconnect_max_s": 0.2},
                       publish={"endpoints": [f"tcp://127.0.0.1:{port}"],
                                "status_interval_s": 0.2})
    with Daemon(tmp_path, cfg) as d, Listener(f"tcp://127.0.0.1:{port}") as sub:
        sub.wait_until(lambda m: m[0].startswith("status/") and m[1]["source"]["reconnects"] >= 2,
                       speed.start_deadline(base_s=5.0), "a status after reconnect attempts")
        code, _ = d.stop()
    assert code == 0, d.stderr[-2000:]
    published = json.dumps([m for _, m, _ in sub.messages])
    assert "s3cr3t" not in published and "s3cr3t" not in d.stderr, d.stderr[-2000:]
    assert f"rtsp://viewer:***@127.0.0.1:{cam}/stream" in published
