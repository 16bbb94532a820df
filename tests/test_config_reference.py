"""One source of truth for the config: every key is declared once (edged/config.py) and the
README's reference table, config.example.yaml, the CLI's option defaults and the engine's
defaults agree with those declarations."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import yaml

from edged.cli import build_parser
from edged.config import Config, DetectionConfig, InferenceConfig, parse_config, reference
from edged.engine.detector import DetectParams
from edged.engine.engine import EngineConfig
from edged.errors import ConfigError, UsageError
from edged.media import SAMPLE_CLIP
from edged.spec import rows
from tests.conftest import REPO

EXAMPLE = REPO / "config.example.yaml"


def test_readme_config_reference_is_generated_from_the_declarations() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- config-reference:[^\n]*-->\n(.*?)<!-- /config-reference -->", readme,
                  re.S)
    assert m, "README lost its config-reference markers"
    assert m.group(1) == reference(), "run `python -m edged.config --markdown` into the README"


def test_example_documents_every_declared_key_with_its_default() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    text = EXAMPLE.read_text(encoding="utf-8")
    for key, *_ in rows(Config):
        *sections, name = key.split(".")
        # commented out in the example: curve is off by default, cameras is camera's long form
        if "curve" in sections or key == "cameras":
            assert re.search(rf"^\s*#\s*{name}:", text, re.M), key
            continue
        node = data
        for s in sections:
            node = node[s]
        assert name in node, f"{key} is not in config.example.yaml"
    # the example's values are the defaults, but for a real camera's name and device
    example = parse_config(data, "example")
    camera = dataclasses.replace(example.camera, name=Config().camera.name,
                                 source=Config().camera.source)
    assert dataclasses.replace(example, camera=camera, cameras=(camera,),
                               source=Config().source) == Config()


def test_cli_and_engine_defaults_are_the_declared_ones() -> None:
    args = build_parser().parse_args(["detect", "x.jpg"])
    d, i = DetectionConfig(), InferenceConfig()
    assert (args.conf, args.iou, args.max_detections) == \
        (d.conf_threshold, d.iou_threshold, d.max_detections)
    assert (args.threads, args.delegate, args.runtime, args.cache_dir) == \
        (i.threads, i.delegate, i.runtime, i.cache_dir)
    p = DetectParams()
    assert (p.conf_threshold, p.iou_threshold, p.max_detections, p.min_box_area) == \
        (d.conf_threshold, d.iou_threshold, d.max_detections, d.min_box_area)
    e = EngineConfig.of(i)
    assert {f.name: getattr(e, f.name) for f in dataclasses.fields(i)} == dataclasses.asdict(i)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"delegate": "tpu"}, "delegate: must be one of auto, vx, ethosu, cpu, xnnpack or a path"),
    ({"runtime": "onnx"}, "runtime: must be auto, ai_edge_litert, tflite_runtime or tensorflow"),
    ({"threads": 0}, "threads: expected an integer in [1, 64], got 0"),
])
def test_engine_config_checks_what_the_config_file_checks(kwargs: dict[str, Any],
                                                          says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        EngineConfig(**kwargs)


@pytest.mark.parametrize(("section", "values", "says"), [
    # these were an AssertionError and an OverflowError ("internal error")
    ("detection", {"class_thresholds": {"bird": None}},
     "detection.class_thresholds.bird: expected a number in [0, 1], got None"),
    ("camera", {"stall_timeout_s": 10 ** 400}, "camera.stall_timeout_s: expected a number in"),
    ("publish", {"curve": {}}, "publish.curve.server_secret_key: required when curve is set"),
    ("inference", {"delegate_options": {"a": [1]}},
     "inference.delegate_options.a: expected a scalar, got [1]"),
    ("camera", {"nmae": "x"}, "camera.nmae: unknown key (did you mean 'name'?)"),
    ("camera", {"zzz": "x"}, "camera.zzz: unknown key (allowed: detection, fps_limit, height"),
    ("events", {"labels": {"brd": {"end_after_s": 9}}},
     "events.labels.'brd': 'brd' is not a label of the model (did you mean 'bird'?)"),
    ("events", {"labels": {"bird": {"end_after": 9}}},
     "events.labels.bird.end_after: unknown key (allowed: ['end_after_s', 'min_hits'"),
    ("events", {"labels": {"bird": {"min_score": 2}}},
     "events.labels.bird.min_score: expected a number in [0, 1], got 2"),
    ("events", {"labels": {"bird": {"min_hits": 6}}},
     "events.labels.'bird'.min_hits: window (5) must be >= min_hits (6; the label's own or"),
    ("events", {"labels": {"bird": [3]}}, "events.labels.bird: expected a mapping, got list"),
])
def test_every_bad_value_is_one_config_error(section: str, values: dict[str, Any],
                                             says: str) -> None:
    data = {"camera": {"source": str(SAMPLE_CLIP)}}
    data[section] = {**data.get(section, {}), **values}
    with pytest.raises(ConfigError) as err:
        parse_config(data, "c.yaml")
    assert str(err.value).startswith(f"c.yaml: {says}"), str(err.value)
