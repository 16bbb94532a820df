# Shared by deploy/demo.sh and deploy/test.sh (sourced, not run): idempotent set-up on Debian.

die() { echo "edged: $*" >&2; exit 2; }

# Run a command as root: directly when root, else through sudo.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root for '$*': run this as root or install sudo"
  fi
}

# Install the Debian packages that are not installed yet (apt-get update first, as a fresh
# machine has no package lists). Nothing is touched when all are present.
apt_need() {
  missing=""
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
      || missing="$missing $pkg"
  done
  [ -n "$missing" ] || return 0
  command -v apt-get >/dev/null 2>&1 \
    || die "missing system packages:$missing (no apt-get here: install them yourself)"
  echo "edged: installing Debian packages:$missing"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq update
  # shellcheck disable=SC2086
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq \
    install --no-install-recommends $missing >/dev/null
}

# venv_sync DIR SPEC: a virtualenv at DIR with SPEC (e.g. ".[test]") installed, redone only when
# pyproject.toml or SPEC changed since the last successful install.
venv_sync() {
  dir=$1 spec=$2
  stamp="$dir/.edged-installed"
  want="$(cat pyproject.toml; echo "$spec")"
  if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  # A venv cut short (Ctrl-C in ensurepip, or made without python3-venv) has a python but no
  # pip: make it again rather than fail on it forever.
  "$dir/bin/python" -m pip --version >/dev/null 2>&1 || python3 -m venv --clear "$dir"
  echo "edged: installing $spec into $dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
  printf '%s' "$want" > "$stamp"
}
