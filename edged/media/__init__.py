"""Media shipped with edged.

``eagle.mp4``: 6 s, 1280x720, 25 fps, no audio. A slow pan and zoom (in, then back out, so it loops
without a jump) over one still photograph of a juvenile bald eagle on a shore: darknet's sample
image ``data/eagle.jpg`` as Debian's ``darknet`` package ships it (Copyright 2018 Joseph Redmon,
"GPL-3.0+ or MIT or WTFPL" per that package's copyright file). It is not video of a moving bird.
``deploy/models/make-demo-clip.sh`` rebuilds it.

``SAMPLE_LABELS``: every label that yolov3-tiny (the shipped int8 model, and the original darknet
weights run by OpenCV's reference reader) reports on the clip at score >= 0.25. The eagle is a
``bird`` on every frame (scores 0.64-0.94); nothing else is. tests/test_demo_clip.py checks it.
"""

from pathlib import Path

SAMPLE_CLIP = Path(__file__).with_name("eagle.mp4")
SAMPLE_LABELS = frozenset({"bird"})
