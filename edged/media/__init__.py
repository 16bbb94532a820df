"""Media shipped with edged.

``eagle.mp4``: 6 s, 1280x720, 25 fps, no audio. A slow pan and zoom (in, then back out, so it loops
without a jump) over one still photograph of a juvenile bald eagle on a shore: darknet's sample
image ``data/eagle.jpg`` as Debian's ``darknet`` package ships it (Copyright 2018 Joseph Redmon,
"GPL-3.0+ or MIT or WTFPL" per that package's copyright file). It is not video of a moving bird.
``deploy/models/make-demo-clip.sh`` rebuilds it.

``SAMPLE_LABELS``: every label that yolov3-tiny (the shipped int8 model, and the original darknet
weights run by OpenCV's reference reader) reports on the clip at score >= 0.25. The eagle is a
``bird`` on every frame (scores 0.64-0.94); nothing else is. tests/test_demo_clip.py checks it.

``golden/``: the accelerator self-check's images (edged.engine.selfcheck), darknet's sample
photographs ``data/dog.jpg``, ``data/person.jpg`` and ``data/horses.jpg`` from the same Debian
package, unchanged (sha256 in ``GOLDEN``): 19 objects of 8 classes, small and large, so both
heads of a YOLO model answer.
"""

from pathlib import Path

SAMPLE_CLIP = Path(__file__).with_name("eagle.mp4")
SAMPLE_LABELS = frozenset({"bird"})
GOLDEN = {  # file -> sha256 (as Debian's darknet 0.0.0+git20180914.61c9d02e-2 ships it)
    "dog.jpg": "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",
    "person.jpg": "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
    "horses.jpg": "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4",
}
GOLDEN_DIR = Path(__file__).with_name("golden")
