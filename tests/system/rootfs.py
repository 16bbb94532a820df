"""Real Debian root filesystems for the system tests (booted systemd, arm64 under qemu-user).

``debootstrap`` runs once per (architecture, package set) and its result is kept in a cache
directory (``~/.cache/edged-tests``, or ``$EDGED_TEST_CACHE``); every test then gets a fresh
copy of it. The mirror is the one this machine's apt already uses.

These tests need root, ``debootstrap`` and ``systemd-nspawn`` (arm64: ``qemu-user-static``),
which ``deploy/test.sh`` installs. A missing tool fails the test: a skipped system test would
hide exactly what it is there to prove. The only skip is when the tests already run inside a
container (the quick-start test runs the whole suite in one), where nspawn cannot nest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What a "fresh Debian machine" has: a minimal system that can boot with systemd as PID 1.
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "ca-certificates")
QEMU_BY_ARCH = {"arm64": "qemu-aarch64"}
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def cache_dir() -> Path:
    path = Path(os.environ.get("EDGED_TEST_CACHE", Path.home() / ".cache" / "edged-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def in_container() -> bool:
    """True inside a systemd-nspawn container, where nspawn and binfmt cannot nest (the
    quick-start test runs the suite in one). Any other container (a privileged docker, as on
    the CI machines) runs debootstrap, nspawn and qemu-user fine: there the system tests run,
    and a missing tool fails them instead of skipping them."""
    marker = Path("/run/systemd/container")
    # systemd's container interface: a lower-case $container in PID 1, and this file.
    if os.environ.get("container") == "systemd-nspawn":  # noqa: SIM112
        return True
    if marker.is_file() and marker.read_text().strip() == "systemd-nspawn":
        return True
    proc = subprocess.run(["systemd-detect-virt", "--container"], capture_output=True,
                          text=True, check=False) if shutil.which("systemd-detect-virt") else None
    return proc is not None and proc.stdout.strip() == "systemd-nspawn"


def require_system_tools(arch: str = "amd64") -> None:
    """Skip when nested in a container; fail (with what to install) when a tool is missing."""
    if in_container():
        pytest.skip("already inside a container: systemd-nspawn/binfmt cannot nest here "
                    "(the same test runs on the host)")
    if os.geteuid() != 0:
        pytest.fail("system tests need root (debootstrap, systemd-nspawn): run deploy/test.sh "
                    "as root or with sudo")
    tools = ["debootstrap", "systemd-nspawn"]
    if arch in QEMU_BY_ARCH:
        tools.append(QEMU_BY_ARCH[arch] + "-static")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run deploy/test.sh, which installs them")
    if arch in QEMU_BY_ARCH:
        ensure_binfmt(QEMU_BY_ARCH[arch])


def ensure_binfmt(qemu: str) -> None:
    """Register qemu-user in binfmt_misc (mounting it if needed) so foreign binaries run."""
    mnt = Path("/proc/sys/fs/binfmt_misc")
    if not (mnt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mnt)], check=True,
                       capture_output=True)
    if not (mnt / qemu).exists():
        subprocess.run(["update-binfmts", "--enable", qemu], check=False, capture_output=True)
    if not (mnt / qemu).exists():
        pytest.fail(f"could not register {qemu} in binfmt_misc (apt-get install "
                    "qemu-user-static binfmt-support)")


def apt_mirror() -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line format)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for src in candidates:
        if not src.is_file():
            continue
        text = src.read_text(errors="replace")
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1).rstrip("/")
            if "security" not in uri and uri.startswith(("http://", "https://")):
                return uri
    return DEFAULT_MIRROR


def _base(arch: str, include: tuple[str, ...]) -> Path:
    """The cached debootstrap tree for (arch, include); built under a lock if absent."""
    mirror = apt_mirror()
    key = hashlib.sha256(repr((SUITE, arch, sorted(include), mirror)).encode()).hexdigest()[:12]
    root = cache_dir() / f"{SUITE}-{arch}-{key}"
    with (cache_dir() / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".edged-complete").exists():
            return root
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--arch={arch}",
             f"--include={','.join(include)}", SUITE, str(tmp), mirror],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = tmp / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"debootstrap {arch} from {mirror} failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}\n{detail}")
        # Debian's apt sources for later installs inside the root (the quick-start test).
        (tmp / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n")
        (tmp / ".edged-complete").write_text(f"{time.monotonic() - t0:.0f} s\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        return root


def debian_root(arch: str, dest: Path, include: tuple[str, ...] = BOOT_PACKAGES) -> Path:
    """A fresh copy of a minimal Debian bookworm root for ``arch`` at ``dest``."""
    base = _base(arch, tuple(include))
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(dest)], check=True)
    (dest / ".edged-complete").unlink(missing_ok=True)
    return dest


def trust_host_network(root: Path) -> None:
    """Give a root the host's CA bundle, so its pip and apt reach the registries as the host does.

    That is this machine's network (a TLS-inspecting proxy), not part of edged's set-up: a real
    fresh machine elsewhere has working certificates of its own.
    """
    if HOST_CA_BUNDLE.exists():
        target = root / "usr/local/share/ca-certificates/host-bundle.crt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HOST_CA_BUNDLE, target)
        shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")


def host_network_env() -> dict[str, str]:
    """Environment a process in the root needs to use the host's registry access."""
    keep = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "http_proxy",
            "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({"PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
                "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
                "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"})
    return env


def build_edged_wheel(dest: Path) -> Path:
    """This checkout's wheel, built from a clean copy of the sources (no stale ``build/``)."""
    import sys
    import tempfile

    repo = Path(__file__).resolve().parents[2]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for f in repo.iterdir():  # pyproject.toml, README.md, LICENSE, ...
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, src / f.name)
        shutil.copytree(repo / "edged", src / "edged",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest),
               str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    wheels = sorted(dest.glob("edged-*.whl"), key=lambda w: w.stat().st_mtime)
    if not wheels:
        raise RuntimeError(f"pip wheel wrote no edged wheel into {dest}")
    return wheels[-1]


def host_wheels(dest: Path, *requirements: str, platform_args: tuple[str, ...] = ()) -> Path:
    """Wheels for an offline install: ``pip wheel`` (host) or ``pip download`` (other platform).

    ``requirements`` are pip requirement strings; ``"."`` or ``".[extra,...]"`` means this
    checkout: its wheel is built first (``build_edged_wheel``), then its dependencies are
    collected like any other requirement. ``platform_args`` (e.g. ``--platform
    manylinux2014_aarch64 --python-version 3.11``) switches to ``pip download
    --only-binary=:all:`` of wheels for that platform; without it, ``pip wheel`` builds for
    this host (sdists such as systemd-python are compiled here).
    """
    import sys

    dest.mkdir(parents=True, exist_ok=True)
    reqs: list[str] = []
    for r in requirements:
        if r == "." or r.startswith(".["):
            wheel = build_edged_wheel(dest)
            extras = r[1:]  # "" or "[a,b]"
            reqs.append(f"edged{extras} @ {wheel.resolve().as_uri()}" if extras
                        else str(wheel))
        else:
            reqs.append(r)
    if platform_args:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
               *platform_args, "-d", str(dest), *reqs]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(dest), *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return dest
