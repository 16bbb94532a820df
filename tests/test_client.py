"""edged.api.client and `edged sub`: typed messages, CURVE, and malformed input from a real PUB."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from edged.api.client import DetMessage, StatusMessage, Subscriber
from edged.api.messages import SCHEMA_VERSION
from edged.errors import EXIT_USAGE
from edged.media import SAMPLE_CLIP
from tests.conftest import one_line_error, run_edged
from tests.daemon_util import Daemon, curve_keys, free_port, write_config
from tests.timing import Speed


def _cfg(tmp: Path, port: int, **publish: object) -> Path:
    return write_config(tmp / "c.yaml",
                        camera={"name": "roof", "source": str(SAMPLE_CLIP)},
                        publish={"endpoints": [f"tcp://127.0.0.1:{port}"], **publish})


def _first(sub: Subscriber, kind: type, timeout_s: float) -> object | None:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        msg = sub.recv(left)
        if isinstance(msg, kind):
            return msg
    return None


def test_typed_iterator_and_sub_command(tmp_path: Path, speed: Speed) -> None:
    port = free_port()
    with Daemon(tmp_path, _cfg(tmp_path, port)) as d:
        ep = f"tcp://127.0.0.1:{port}"
        with Subscriber([ep]) as sub:
            det = _first(sub, DetMessage, speed.start_deadline())
            st = _first(sub, StatusMessage, speed.deadline(base_s=1.0))
        assert isinstance(det, DetMessage) and det.topic == "det/roof/"
        assert det.width == 1280 and det.backend == "cpu" and det.latency_ms["total"] > 0
        assert isinstance(st, StatusMessage) and st.state == "running"
        # `edged sub` starts (a fresh Python, like the daemon) and waits for three messages
        proc = run_edged("sub", ep, "--topic", "det/", "--count", "3", "--json",
                         timeout=speed.start_deadline(n_frames=3))
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(ln) for ln in proc.stdout.splitlines()]
        assert len(lines) == 3 and all(m["kind"] == "detections" for m in lines)
        human = run_edged("sub", ep, "--topic", "status/", "--count", "1",
                          timeout=speed.start_deadline(base_s=1.0))
        assert human.stdout.startswith("status/roof/ running on cpu")
        assert d.stop()[0] == 0


def test_sub_times_out_cleanly() -> None:
    proc = run_edged("sub", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5", timeout=30)
    assert proc.returncode == 1 and "no message within 0.5 s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_curve_only_authorized_clients(tmp_path: Path, speed: Speed) -> None:
    keys, clients = curve_keys(tmp_path, ("client", "stranger"), ("client",))
    (server_pub, server_sec), client_sec = keys["server"], keys["client"][1]
    stranger_sec = keys["stranger"][1]
    port = free_port()
    cfg = _cfg(tmp_path, port, curve={"server_secret_key": server_sec,
                                      "authorized_keys_dir": str(clients)})
    ep = f"tcp://127.0.0.1:{port}"
    with Daemon(tmp_path, cfg) as d:
        with Subscriber([ep], server_public_key=Path(server_pub),
                        client_certificate=Path(client_sec)) as ok:
            assert isinstance(_first(ok, DetMessage, speed.start_deadline()), DetMessage)
        with Subscriber([ep], server_public_key=Path(server_pub),
                        client_certificate=Path(stranger_sec)) as stranger, \
                Subscriber([ep]) as plain:
            assert stranger.recv(2.0) is None
            assert plain.recv(0.5) is None
        proc = run_edged("sub", ep, "--server-key", server_pub, "--client-cert", client_sec,
                         "--count", "1", "--json", timeout=speed.start_deadline(n_frames=1))
        assert proc.returncode == 0 and json.loads(proc.stdout)["camera"] == "roof"
        assert d.stop()[0] == 0


GOOD = {"v": SCHEMA_VERSION, "kind": "detections", "camera": "c", "seq": 0, "frame_seq": 0,
        "ts_ns": 1,
        "frame": {"width": 10, "height": 10}, "model": "m", "backend": "cpu",
        "latency_ms": {"preprocess": 1, "inference": 1, "postprocess": 1, "total": 3},
        "detections": [{"class_id": 0, "label": "a", "score": 0.5, "box": [0, 0, 1, 1],
                        "box_norm": [0, 0, 0.1, 0.1]}]}


@pytest.mark.parametrize("bad", [
    [b"det/c/", b"not json"],
    [b"det/c/", b"\xff\xfe"],
    [b"det/c/", json.dumps({**GOOD, "v": SCHEMA_VERSION + 1}).encode()],
    [b"det/c/", json.dumps({k: v for k, v in GOOD.items() if k != "frame"}).encode()],
    [b"det/c/", json.dumps({**GOOD, "detections": [{"box": [1, 2]}]}).encode()],
    [b"det/c/", json.dumps({**GOOD, "kind": "gossip"}).encode()],
    [b"det/c/", json.dumps([1, 2, 3]).encode()],
    [b"det/c/", json.dumps(GOOD).encode(), b"extra frame"],
    [b"det/c/"],
    [b"det/kitchen/", json.dumps(GOOD).encode()],  # about camera c: not on kitchen's topic
])
def test_malformed_messages_are_skipped(bad: list[bytes]) -> None:
    port = free_port()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    try:
        with Subscriber([f"tcp://127.0.0.1:{port}"], topics=["det/"]) as sub:
            # the slow-joiner: publish good messages until one arrives, instead of sleeping
            deadline = time.monotonic() + 10
            got = None
            while got is None and time.monotonic() < deadline:
                pub.send_multipart([b"det/c/", json.dumps(GOOD).encode()])
                got = sub.recv(0.05)
            assert isinstance(got, DetMessage)
            while sub.recv(0.1) is not None:  # drain the extra good ones
                pass
            pub.send_multipart(bad)
            pub.send_multipart([b"det/c/", json.dumps({**GOOD, "seq": 99}).encode()])
            after = sub.recv(5.0)
        assert isinstance(after, DetMessage) and after.seq == 99
        assert sub.malformed == 1
    finally:
        pub.close(linger=0)
        ctx.term()


def test_the_earlier_import_path_still_works() -> None:
    """Scripts written against `from edged.client import Subscriber` (before the layered
    layout moved the client to edged.api.client) keep working."""
    import edged.client

    assert edged.client.Subscriber is Subscriber and edged.client.DetMessage is DetMessage


def test_cameras_narrow_kinds_and_refuse_a_camera_topic() -> None:
    from edged.api.client import topics_for

    assert topics_for(["det/", "status", "process/"], ["roof"]) == \
        ["det/roof/", "status/roof/", "process/"]
    assert topics_for(["det/"], None) == ["det/"]
    with pytest.raises(ValueError, match="one camera's topic"):
        topics_for(["status/b/"], ["a"])
    proc = run_edged("sub", "tcp://127.0.0.1:9", "--topic", "det/b/", "--camera", "a")
    assert proc.returncode == EXIT_USAGE and "--camera: 'det/b/' is one camera's topic" in \
        one_line_error(proc)


def test_sub_save_writes_snaps_and_skips_hostile_names(tmp_path: Path) -> None:
    """`edged sub --save`: file names come from the publisher. A name edged would never make
    (too long, or a header whose camera is not the topic's) is skipped, and the subscriber
    goes on saving the next ones."""
    import dataclasses
    import subprocess
    import sys

    from edged.api.messages import SnapMessage, encode

    port = free_port()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    out = tmp_path / "saved"
    snap = SnapMessage("roof", 0, "1763800000000000000-ab12-1", "bird", 0.9, 0,
                       (0.1, 0.1, 0.2, 0.2), False, 2, 2, None, jpeg=b"\xff\xd8one")

    def send(msg: SnapMessage, topic: str | None = None) -> None:
        pub.send_multipart([(topic or msg.topic).encode(), encode(msg), msg.jpeg])

    proc = subprocess.Popen([sys.executable, "-m", "edged", "sub", f"tcp://127.0.0.1:{port}",
                             "--topic", "snap/", "--save", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = out / "roof" / f"{snap.event}.jpg"
        deadline = time.monotonic() + 60  # bounds a failing test only
        while not first.exists():  # the slow joiner: until the subscriber is connected
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            send(snap)
            time.sleep(0.05)
        send(dataclasses.replace(snap, event="1" * 300 + "-ab12-2"))  # ENAMETOOLONG
        send(dataclasses.replace(snap, event="../../etc-ab12-3"))
        send(dataclasses.replace(snap, camera="kitchen", event="1-ab12-4"), "snap/roof/")
        last = dataclasses.replace(snap, event="1763800000000000000-ab12-5", jpeg=b"\xff\xd8two")
        send(last)
        while not (out / "roof" / f"{last.event}.jpg").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        assert proc.poll() is None  # still running after the hostile ones
    finally:
        proc.kill()
        _, err = proc.communicate()
        pub.close()
        ctx.term()
    saved = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert saved == [f"roof/{snap.event}.jpg", f"roof/{last.event}.jpg"], saved
    assert (out / "roof" / f"{last.event}.jpg").read_bytes() == b"\xff\xd8two"
    assert err.count("--save: skipping a snap named") == 2, err
