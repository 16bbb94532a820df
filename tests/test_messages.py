"""The message declarations are the one source: the schema file, the README's field reference,
the encoder and the decoder all derive from them (and the README's examples are real messages)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import jsonschema
import numpy as np
import pytest

from edged.api import schema
from edged.api.client import parse
from edged.api.messages import (
    KINDS,
    STAGES,
    CountMessage,
    Detection,
    DetMessage,
    FrameSize,
    FrigateStatus,
    Latency,
    MalformedMessage,
    Message,
    Occupancy,
    Percentiles,
    ProcessStatus,
    ReloadStatus,
    SelfCheckStatus,
    SnapMessage,
    SourceStatus,
    StatusMessage,
    decode,
    detections_of,
    encode,
    to_wire,
)
from edged.core.types import Detections
from tests.conftest import REPO

VALIDATOR = jsonschema.Draft202012Validator(schema.load_schema())

DET = DetMessage("roof", 7, 12, 1_763_800_000_123_456_789, FrameSize(1280, 720),
                 "yolov3-tiny-416", "cpu", Latency(0.4, 11.9, 0.2, 12.5),
                 (Detection(14, "bird", 0.87, (412.0, 133.5, 498.2, 201.0),
                            (0.3219, 0.1854, 0.3892, 0.2792)),))
STATUS = StatusMessage(
    camera="roof", seq=3, state="reloading", ts_ns=1_763_800_001_000_000_000, uptime_s=17.0,
    model="yolov3-tiny-416", backend="none", fallback_reason=None, runtime="ai_edge_litert",
    fps_in=25.0, fps_out=24.5, frames_in=425, frames_out=420, frames_dropped=5,
    source=SourceStatus("rtsp://viewer:***@cam/stream", None, 0, (1280, 720)),
    latency_ms={"total": Percentiles(12.5, 14.1, 17.0)},
    occupancy=Occupancy({"bird": 2, "person": 0}, {"rail": {"bird": 1}}), publish_dropped=0,
    endpoints=("tcp://127.0.0.1:5556",),
    reload=ReloadStatus("in_progress", 1_763_800_000_500_000_000, None, "loading_model", 120.0,
                        None))
COUNT = CountMessage("roof", 9, 1_763_800_001_000_000_000,
                     Occupancy({"bird": 1}, {"rail": {"bird": 1}, "door": {}}))
SNAP = SnapMessage("roof", 2, "1763800000123456789-3f2a-4", "bird", 0.91,
                   1_763_800_001_000_000_000, (0.32, 0.18, 0.39, 0.28), False, 1280, 720,
                   "roof/1763800000123456789-3f2a-4.jpg", jpeg=b"\xff\xd8 not really")
PROCESS = ProcessStatus(
    seq=4, state="running", ts_ns=1_763_800_001_000_000_000, uptime_s=17.0,
    model="yolov3-tiny-416", backend="vx", fallback_reason=None, runtime="tflite_runtime",
    inference_load=0.62, fps_out=34.8, frames_out=590,
    cameras={"roof": "running", "roof2": "source_down"}, history="ok", snapshots=None,
    mqtt="connected to broker.lan:1883",
    self_check=SelfCheckStatus(0.95, 19, 1, 20, 19, 3, 412.0, True),
    frigate=FrigateStatus("tcp://127.0.0.1:5555", 2, 1200, 3, 1, Percentiles(14.1, 22.5, 61.0),
                          "dtype uint8 or float32 (Frigate's model.input_dtype int or float), "
                          "got int64"),
    publish_dropped=0, endpoints=("tcp://127.0.0.1:5556",), reload=None)


def test_schema_file_is_generated_from_the_declarations() -> None:
    assert schema.SCHEMA_PATH.read_text(encoding="utf-8") == schema.render(), \
        "edged/api/messages.schema.json is stale: run python -m edged.api.schema --write"


def test_readme_field_reference_is_generated_from_the_declarations() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert schema.BEGIN in readme and schema.END in readme, "README lost its message reference"
    generated = readme.partition(schema.BEGIN)[2].partition(schema.END)[0]
    assert generated == schema.markdown(), \
        "README's message reference is stale: run python -m edged.api.schema --write"


def _readme_examples() -> list[dict[str, Any]]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Message schema"):readme.index("### Subscribing from")]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_readme_examples_are_valid_messages() -> None:
    examples = _readme_examples()
    assert {e["kind"] for e in examples} == {k.KIND for k in KINDS}
    for example in examples:
        VALIDATOR.validate(example)
        assert to_wire(decode(json.dumps(example).encode())) == example


@pytest.mark.parametrize("message", [DET, STATUS, PROCESS, COUNT, SNAP],
                         ids=["det", "status", "process", "count", "snap"])
def test_encode_validates_and_decodes_to_the_same_value(message: Message) -> None:
    payload = encode(message)
    VALIDATOR.validate(json.loads(payload))
    assert decode(payload) == message
    # a camera's topics end in "/": det/roof/ is no prefix of det/roof2/
    assert message.topic == ("process/" if message is PROCESS else f"{message.TOPIC}/roof/")


def test_a_camera_state_the_schema_does_not_know_fails_validation() -> None:
    bad = {**json.loads(encode(PROCESS)), "cameras": {"roof": "sleeping"}}
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(bad)
    assert decode(json.dumps(bad).encode()).cameras == {"roof": "sleeping"}  # tolerant client


def test_every_declared_field_is_in_the_schema_and_the_wire() -> None:
    for message in (DET, STATUS, PROCESS, COUNT, SNAP):
        wire = to_wire(message)
        props = schema.build_schema()["$defs"][type(message).__name__]["properties"]
        declared = [f.name for f in dataclasses.fields(message) if f.metadata.get("wire", True)]
        assert list(wire) == list(props) == ["v", "kind", *declared]


def test_detections_of_rounds_and_normalizes() -> None:
    dets = Detections(np.array([[412.04, 133.46, 498.21, 201.0]], np.float32),
                      np.array([0.87654], np.float32), np.array([14], np.int32))
    (d,) = detections_of(dets, ["x"] * 14 + ["bird"], 1280, 720)
    assert d.label == "bird" and d.score == 0.8765 and d.box == (412.0, 133.5, 498.2, 201.0)
    assert d.box_norm == (0.3219, 0.1854, 0.3892, 0.2792)
    (unknown,) = detections_of(dets, ["a"], 1280, 720)
    assert unknown.label == "14"  # a class the labels do not cover is named by its id


def test_nan_is_refused_by_the_encoder() -> None:
    bad = dataclasses.replace(DET, latency_ms=Latency(math.nan, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        encode(bad)


GOOD = json.loads(encode(DET))


def _with(path: str, value: Any) -> bytes:
    data = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(("payload", "error"), [
    (_with("seq", True), "seq: expected an integer, got bool"),
    (_with("seq", "7"), "seq: expected an integer, got str"),
    (_with("seq", 7.5), "seq: expected an integer, got float"),
    (_with("seq", -1), "seq: -1 is out of range [0, None]"),
    (_with("camera", ""), "camera: shorter than 1 characters"),
    (_with("latency_ms.total", int("1" + "0" * 400)), "latency_ms.total: expected a finite "
     "number, got a huge integer"),
    (_with("detections.0.box.3", "x"), "detections[0].box[3]: expected a finite number"),
    (_with("v", True), "not a version-2 edged message"),
    (_with("frame", KeyError), "<top>: missing 'frame'"),
    (_with("frame.width", None), "frame.width: expected an integer, got NoneType"),
    (_with("latency_ms.total", "fast"), "latency_ms.total: expected a finite number, got str"),
    (_with("detections.0.box", [1, 2]), "detections[0].box: expected an array of 4, got list"),
    (_with("detections.0.score", 1e999), "detections[0].score: expected a finite number"),
    (_with("detections", {}), "detections: expected an array, got dict"),
    (_with("camera", 5), "camera: expected a string, got int"),
    (_with("v", 1), "not a version-2 edged message"),
    (_with("kind", "gossip"), "unknown kind gossip"),
    (b"[1, 2]", "not a version-2 edged message"),
    (b"\xff", "not UTF-8 JSON"),
    (b"[" * 100_000, "not UTF-8 JSON"),
])
def test_decoder_refuses_what_the_declaration_does_not_allow(payload: bytes, error: str) -> None:
    with pytest.raises(MalformedMessage) as e:
        decode(payload)
    assert error in str(e.value)


def test_decoder_ignores_unknown_fields_and_values() -> None:
    """A newer daemon may add fields and enum values (a backend): old clients keep working,
    and ``raw`` is the payload as received."""
    data = {**GOOD, "new_field": {"x": 1}, "backend": "hailo", "seq": 7.0}
    msg = decode(json.dumps(data).encode(), "det/roof/")
    assert isinstance(msg, DetMessage) and msg.backend == "hailo" and msg.seq == DET.seq
    assert msg.raw == data and msg.topic == "det/roof/"
    assert msg.latency_ms["total"] == 12.5  # plain-JSON clients indexed it like this


def test_stages_are_the_latency_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(Latency)) == STAGES


def test_a_snap_is_three_frames_and_the_others_two() -> None:
    topic, header = SNAP.topic.encode(), encode(SNAP)
    got = parse([topic, header, SNAP.jpeg])
    assert isinstance(got, SnapMessage) and got == SNAP and got.jpeg == SNAP.jpeg
    assert "jpeg" not in json.loads(header)  # the picture is the third frame, not JSON
    with pytest.raises(MalformedMessage, match="a snap message of 2 frames"):
        parse([topic, header])
    with pytest.raises(MalformedMessage, match="a detections message of 3 frames"):
        parse([DET.topic.encode(), encode(DET), b"x"])
    with pytest.raises(MalformedMessage, match="got 4 frames"):
        parse([topic, header, SNAP.jpeg, b""])


def _message_types() -> list[type]:
    """Every dataclass the module declares with ``@message`` (the kinds and their parts)."""
    import edged.api.messages as m
    return [v for v in vars(m).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
            and v.__module__ == m.__name__]


def test_the_type_checker_knows_which_message_fields_are_required(tmp_path) -> None:
    """``describe`` returns Any, which a plain dataclass takes for a default: a constructor
    call that left out ``ts_ns`` passed mypy and failed only in the tests. ``@message`` is a
    dataclass transform with ``describe`` as a field specifier, so mypy names the missing
    fields. Each type is called without arguments (every declared field reported missing),
    and once correctly, which must pass."""
    from mypy import api as mypy_api
    types = _message_types()
    assert len(types) >= 15
    names = ", ".join(t.__name__ for t in types)
    lines = [f"from edged.api.messages import {names}"]
    required = {}
    for t in types:
        req = [f.name for f in dataclasses.fields(t)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if req:
            required[t.__name__] = req
            lines.append(f"{t.__name__}()")
    lines.append("Latency(1.0, 2.0, 3.0, 4.0)")
    snippet = tmp_path / "snippet.py"
    snippet.write_text("\n".join(lines) + "\n")
    out, err, status = mypy_api.run([str(snippet), "--no-incremental", "--cache-dir",
                                     str(tmp_path / "cache"), "--follow-imports", "silent"])
    assert status == 1, out + err
    for i, name in enumerate(required, start=2):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{snippet}:{i}:"))
        assert f'in call to "{name}"' in line, line
        for field_name in required[name]:
            assert f'"{field_name}"' in line, (name, field_name, line)
    last = len(required) + 2
    assert not [ln for ln in out.splitlines() if ln.startswith(f"{snippet}:{last}:")], out
