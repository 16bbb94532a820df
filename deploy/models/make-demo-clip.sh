#!/usr/bin/env bash
# Rebuild edged/media/eagle.mp4, the demo clip edged ships: 6 s, 1280x720, 25 fps, H.264 (High,
# yuv420p, no audio), a slow pan and zoom in and back out (it loops without a jump) over ONE
# still photograph of a juvenile bald eagle standing on a shore. It is not video of a moving bird.
#
# The photo is darknet's sample image data/eagle.jpg as Debian ships it in the `darknet` package
# (bookworm, 0.0.0+git20180914.61c9d02e-2; /usr/share/darknet/data/eagle.jpg). Licence as Debian's
# copyright file for that package states it for all its files: Copyright 2018 Joseph Redmon,
# "GPL-3.0+ or MIT or WTFPL" (we use it under MIT/WTFPL). The photographer is not recorded there.
#
# What the shipped model and OpenCV's darknet reference see on it is pinned by
# tests/test_demo_clip.py (edged.media.SAMPLE_LABELS): re-run it after rebuilding the clip.
# Needs: apt-get (a Debian apt source), dpkg-deb, ffmpeg with libx264, python with opencv + numpy.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
out=edged/media/eagle.mp4
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q darknet >/dev/null)
dpkg-deb -x "$tmp"/darknet_*.deb "$tmp/x"
photo="$tmp/x/usr/share/darknet/data/eagle.jpg"
echo "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0  $photo" | sha256sum -c --quiet
"$python" - "$photo" <<'PY' | ffmpeg -hide_banner -loglevel error -y -f rawvideo -pix_fmt bgr24 \
    -s 1280x720 -r 25 -i - -c:v libx264 -preset slow -crf 20 -pix_fmt yuv420p -profile:v high \
    -g 25 -movflags +faststart -an "$out"
import math
import sys

import cv2
import numpy as np

src = cv2.imread(sys.argv[1], cv2.IMREAD_COLOR)  # 773x512; the eagle spans x 181-596, y 83-462
W, H, N = 1280, 720, 150
k0 = (386.5, 294.5, 773.0)  # window centre x, centre y, width in source pixels (16:9): whole width
k1 = (420.0, 278.0, 680.0)  # closer, towards the head
for i in range(N):
    t = i / (N / 2) if i < N / 2 else 2 - i / (N / 2)  # 0 -> 1 -> 0
    e = (1 - math.cos(math.pi * t)) / 2  # ease in and out
    cx, cy, w = (a + (b - a) * e for a, b in zip(k0, k1))
    s = W / w
    m = np.float32([[s, 0, W / 2 - s * cx], [0, s, H / 2 - s * cy]])
    frame = cv2.warpAffine(src, m, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    sys.stdout.buffer.write(frame.tobytes())
PY
echo "wrote $out ($(stat -c %s "$out") bytes)"
