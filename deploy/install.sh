#!/bin/sh
# Install edged on a board with Python 3 (or into a staging root for an image build).
#
#   deploy/install.sh [--destdir DIR] [--prefix /opt/edged] [--system-site] [--no-deps]
#                     [--extras systemd] [--wheels DIR] [--python python3] [--enable]
#
#   --prefix       where the virtualenv goes (default /opt/edged)
#   --system-site  let the venv see the system's packages: the NXP BSP's tflite_runtime and its
#                  OpenCV with GStreamer (recommended on i.MX boards)
#   --no-deps      install edged only; numpy, OpenCV, pyzmq, PyYAML and a TFLite runtime come
#                  from the system (with --system-site)
#   --extras LIST  optional features, comma-separated: systemd (journald fields CAMERA/BACKEND/
#                  MODEL via systemd-python; built from source unless --wheels has its wheel:
#                  apt-get install libsystemd-dev pkg-config gcc python3-dev)
#   --wheels DIR   offline: install only from the wheels in DIR (no index). Make DIR on a
#                  connected machine with the board's architecture and Python, from the checkout:
#                  pip wheel -w DIR '.[systemd]' 'setuptools>=77' wheel
#   --python PY    the interpreter for the venv (default python3; Debian: apt-get install
#                  python3-venv)
#   --destdir      stage everything under DIR (nothing outside it is touched; no user is
#                  created, no systemctl is run); the venv is relocated to --prefix
#   --enable       (not with --destdir) enable and start the service
#
# Installs: the venv, /usr/bin/edged, /etc/edged/config.yaml (kept if present), the unit in
# /lib/systemd/system, a sysusers.d entry for the edged user (group video for cameras/NPU).
set -eu

DESTDIR=""
PREFIX=/opt/edged
SYSTEM_SITE=""
NO_DEPS=""
PYTHON=python3
ENABLE=""
EXTRAS=""
WHEELS=""
SRC=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; DESTDIR=$2; shift 2 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
    --system-site) SYSTEM_SITE=--system-site-packages; shift ;;
    --no-deps) NO_DEPS=--no-deps; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
    --extras) [ $# -ge 2 ] || die "--extras needs a list, e.g. systemd"; EXTRAS=$2; shift 2 ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; WHEELS=$2; shift 2 ;;
    --enable) ENABLE=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be absolute" ;; esac
[ -z "$DESTDIR" ] || [ -z "$ENABLE" ] || die "--enable cannot be used with --destdir"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
case "$EXTRAS" in *[!a-z,]*) die "--extras: a comma-separated list such as systemd" ;; esac
if [ -n "$WHEELS" ]; then
  [ -d "$WHEELS" ] || die "--wheels: $WHEELS is not a directory"
  WHEELS=$(cd "$WHEELS" && pwd)
  # pip's own configuration (an index URL, a proxy) must not turn this into an online install
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS"
fi
target="$SRC"
[ -z "$EXTRAS" ] || target="$SRC[$EXTRAS]"

venv="$DESTDIR$PREFIX"
echo "edged: creating virtualenv $venv"
if ! err=$("$PYTHON" -m venv $SYSTEM_SITE "$venv" 2>&1); then
  case "$err" in
    *ensurepip*) die "$PYTHON cannot create a virtualenv: no ensurepip (Debian/Ubuntu: apt-get install python3-venv)" ;;
    *) die "$PYTHON -m venv $venv failed: $(printf '%s\n' "$err" | grep . | tail -n 1)" ;;
  esac
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check $NO_DEPS "$target" || \
  die "pip could not install $target${WHEELS:+ from $WHEELS (offline)}"

if [ -n "$DESTDIR" ]; then
  # The venv was built at $DESTDIR$PREFIX but will run from $PREFIX: fix the script shebangs.
  for f in "$venv"/bin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if head -c 2 "$f" | grep -q '^#!'; then
      sed -i "1s|^#!$venv/|#!$PREFIX/|" "$f"
    fi
  done
  sed -i "s|$venv|$PREFIX|g" "$venv/bin/activate" "$venv/pyvenv.cfg" 2>/dev/null || true
fi

install -d "$DESTDIR/usr/bin" "$DESTDIR/etc/edged" "$DESTDIR/lib/systemd/system" \
  "$DESTDIR/usr/lib/sysusers.d" "$DESTDIR/usr/share/doc/edged"
ln -sf "$PREFIX/bin/edged" "$DESTDIR/usr/bin/edged"
if [ -e "$DESTDIR/etc/edged/config.yaml" ]; then
  install -m 0640 "$SRC/deploy/edged-board.yaml" "$DESTDIR/etc/edged/config.yaml.new"
  echo "edged: kept /etc/edged/config.yaml; the new template is config.yaml.new"
else
  install -m 0640 "$SRC/deploy/edged-board.yaml" "$DESTDIR/etc/edged/config.yaml"
fi
install -m 0644 "$SRC/systemd/edged.service" "$DESTDIR/lib/systemd/system/edged.service"
cat > "$DESTDIR/usr/lib/sysusers.d/edged.conf" <<'CONF'
# edged runs as its own user; group video opens cameras and the NPU devices.
u edged - "edged object-detection daemon" /var/lib/edged /usr/sbin/nologin
m edged video
CONF
install -m 0644 "$SRC/README.md" "$SRC/config.example.yaml" "$DESTDIR/usr/share/doc/edged/"

if [ -z "$DESTDIR" ]; then
  if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/edged.conf
    chgrp edged /etc/edged/config.yaml
    systemctl daemon-reload
    if [ -n "$ENABLE" ]; then systemctl enable --now edged; fi
  else
    echo "edged: not root or no systemd: create the user (systemd-sysusers) and reload systemd yourself"
  fi
fi
echo "edged: installed into ${DESTDIR:-/} (venv $PREFIX)"
