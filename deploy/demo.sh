#!/bin/sh
# Run the daemon on the shipped model and the bundled sample clip, publishing on
# tcp://127.0.0.1:5556 (watch it with .venv-run/bin/edged sub; Ctrl-C stops it).
# First run: installs python3-venv if missing (as root or with sudo) and the runtime only
# (numpy, OpenCV headless, pyzmq, PyYAML, ai-edge-litert) into .venv-run. Later runs start at once.
# Arguments go to `edged run` (e.g. --config my.yaml).
set -eu
cd "$(dirname "$0")/.."
. deploy/setup-lib.sh

command -v python3 >/dev/null 2>&1 || apt_need python3
apt_need python3-venv
venv_sync .venv-run .
exec .venv-run/bin/edged run "$@"
