"""The model shipped with edged: COCO yolov3-tiny 416, int8 (+ Vela variant for i.MX 93).

Rebuilt by ``deploy/models/make-default-model.sh`` (see README, "Models").
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).with_name("yolov3-tiny-416.yaml")
