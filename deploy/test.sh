#!/bin/sh
# Run edged's checks and tests: ruff, mypy, then pytest (arguments go to pytest).
# First run: installs the Debian packages the tests use (as root or with sudo) and .venv with
# edged's export, test, systemd, plot and mqtt extras. Later runs only run the tests.
set -eu
cd "$(dirname "$0")/.."
. deploy/setup-lib.sh

# python3-venv: the venv; gcc, pkg-config, libsystemd-dev, python3-dev (Python.h): systemd-python
# and the test delegate;
# ffmpeg: a real HTTP camera; GStreamer's RTSP server (python3-gi + plugins): a real RTSP camera;
# systemd, systemd-container, debootstrap: the unit under a booted systemd (systemd-nspawn);
# qemu-user-static, binfmt-support: edged on arm64 under qemu-user;
# mosquitto, openssl: a real MQTT broker, with a password file and with TLS.
TEST_APT_PACKAGES="python3-venv gcc pkg-config libsystemd-dev python3-dev ffmpeg \
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
  systemd systemd-container debootstrap qemu-user-static binfmt-support mosquitto openssl"
command -v python3 >/dev/null 2>&1 || apt_need python3
# shellcheck disable=SC2086
apt_need $TEST_APT_PACKAGES
venv_sync .venv '.[export,test,systemd,plot,mqtt]'

.venv/bin/ruff check edged tests benchmarks
.venv/bin/mypy
# The system tests (debootstrap, systemd-nspawn, binfmt) need root: as another user, pytest runs
# through sudo.
if [ "$(id -u)" = 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
command -v sudo >/dev/null 2>&1 || die "the tests need root: run this as root or install sudo"
exec sudo --preserve-env=EDGED_ASSETS,EDGED_TEST_CACHE,EDGED_TEST_SLACK \
  .venv/bin/python -m pytest -q "$@"
