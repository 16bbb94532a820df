"""An arm64 Debian bookworm root with edged installed offline, run through qemu-user.

The root is ``debootstrap --arch=arm64`` (via ``rootfs.debian_root``) plus a venv at
``/opt/edged`` holding the aarch64 wheels pip downloads for edged on the host
(``rootfs.host_wheels`` with ``AARCH64_WHEELS``). Installing them emulated takes a minute or
two, so that root is cached in ``rootfs.cache_dir()`` under a key made of the dependency wheels'
contents; every test gets a fresh copy and installs this checkout's edged wheel into it
(seconds). Processes inside run with ``chroot`` in a private mount namespace, sharing the host's
network, so a subscriber on the host reaches a tcp endpoint on 127.0.0.1 inside.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

from tests.system import rootfs

ARCH = "arm64"
VENV = "/opt/edged"
# Debian bookworm's python3 is 3.11 (glibc 2.36): any manylinux up to 2_28 runs there.
AARCH64_WHEELS = ("--python-version", "3.11", "--implementation", "cp",
                  "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
                  "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux_2_28_aarch64")
PIP_OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
ELF_MACHINE = {62: "x86_64", 183: "aarch64"}
# The guest sees /proc and /sys, mounted in a private mount namespace before the chroot: the
# mounts disappear with the process, nothing leaks into the cached root. The emulated CPU is a
# Cortex-A53, the i.MX 8M Plus's core (QEMU_CPU), and /proc/cpuinfo says so (ARM_CPUINFO, one
# entry per host CPU). Both matter, checked with qemu-user 7.2 (bookworm), which passes the
# host's x86 /proc/cpuinfo through: XNNPACK's cpuinfo then segfaults in allocate_tensors()
# (with /sys) or gives up, and TFLite silently runs its non-XNNPACK kernels (without /sys),
# which no board does; on qemu's default "max" CPU (SVE2, i8mm) XNNPACK's int8 results are
# garbage (outputs off by up to 254 from TFLite's reference kernels); a cpuinfo claiming more
# than the emulated CPU has (asimddp on an A53) ends in SIGILL. As configured here, XNNPACK's
# arm64 outputs are bit-identical to x86's for the same input tensor.
QEMU_CPU = "cortex-a53"
CPUINFO = "etc/edged-test-arm64-cpuinfo"
_ENTER = ('mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && '
          f'mount --bind "$0/{CPUINFO}" "$0/proc/cpuinfo" && exec chroot "$0" "$@"')
ARM_CPUINFO = """processor\t: {n}
BogoMIPS\t: 16.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd03
CPU revision\t: 4

"""


CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LANG": "C.UTF-8", "HOME": "/root", "QEMU_CPU": QEMU_CPU}


def _host_cpus() -> list[int]:
    """The CPUs in /sys/devices/system/cpu/present ("0-1", "0-3,6"), which the guest sees."""
    cpus: list[int] = []
    for part in Path("/sys/devices/system/cpu/present").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def chroot_argv(root: Path, *argv: str) -> list[str]:
    """argv that runs ``argv`` inside ``root`` (exec'd all the way: its pid is the guest's)."""
    (root / CPUINFO).write_text("".join(ARM_CPUINFO.format(n=n) for n in _host_cpus()))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, str(root),
            *argv]


def run_in(root: Path, *argv: str, timeout: float, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(chroot_argv(root, *argv), capture_output=True, text=True,
                          timeout=timeout, env={**CHROOT_ENV, **(env or {})}, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {root} exited {proc.returncode}:\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def popen_in(root: Path, *argv: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(chroot_argv(root, *argv), env=CHROOT_ENV, text=True, **kwargs)


def elf_machine(path: Path) -> str:
    """The CPU an ELF file is built for (e_machine), read from its header."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINE.get(code, f"e_machine {code}")


def _dependency_wheels(wheels: Path) -> list[Path]:
    return sorted(w for w in wheels.glob("*.whl") if not w.name.startswith("edged-"))


def wheel_set_key(wheels: Path) -> str:
    """Content key of edged's dependency wheels (zip member names and CRCs, not timestamps).

    edged's own wheel is left out: it changes with every commit and installs in seconds, so
    the cached root holds only its dependencies and each test installs edged on a copy.
    """
    h = hashlib.sha256()
    for whl in _dependency_wheels(wheels):
        h.update(whl.name.encode() + b"\0")
        with zipfile.ZipFile(whl) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                h.update(f"{info.filename}:{info.CRC}:{info.file_size}\n".encode())
    h.update(repr((rootfs.SUITE, ARCH, rootfs.BOOT_PACKAGES, rootfs.apt_mirror())).encode())
    return h.hexdigest()[:12]


def _install_dependencies(root: Path, wheels: Path) -> None:
    """A venv holding pip and every dependency wheel, installed emulated inside ``root``."""
    target = root / "opt/wheels"
    target.mkdir(parents=True)
    deps = _dependency_wheels(wheels)
    for w in deps:
        shutil.copyfile(w, target / w.name)
    pip_wheel = [w.name for w in deps if w.name.startswith("pip-")]
    assert pip_wheel, f"no pip wheel in {wheels}"
    # minbase has no python3-venv (ensurepip): make the venv bare and run pip from its wheel.
    run_in(root, "/usr/bin/python3", "-m", "venv", "--without-pip", VENV, timeout=600)
    run_in(root, f"{VENV}/bin/python", f"/opt/wheels/{pip_wheel[0]}/pip", "install",
           "--no-input", "-q", *(f"/opt/wheels/{w.name}" for w in deps), timeout=1800,
           env={**PIP_OFFLINE, "PIP_FIND_LINKS": "/opt/wheels"})
    shutil.rmtree(target)


def install_edged(root: Path, wheels: Path) -> None:
    """Install edged's wheel (offline, no index) into the root's venv; its deps must be there."""
    wheel = sorted(wheels.glob("edged-*.whl"))
    assert len(wheel) == 1, f"expected one edged wheel in {wheels}, got {wheel}"
    shutil.copyfile(wheel[0], root / "tmp" / wheel[0].name)
    run_in(root, f"{VENV}/bin/python", "-m", "pip", "install", "--no-input", "-q",
           f"/tmp/{wheel[0].name}", timeout=900, env=PIP_OFFLINE)
    # Every requirement of edged resolved from the cached wheels, nothing missing or clashing.
    run_in(root, f"{VENV}/bin/python", "-m", "pip", "check", timeout=600, env=PIP_OFFLINE)


def prepared_root(wheels: Path) -> tuple[Path, bool]:
    """The cached arm64 root with edged's dependencies from ``wheels``: (path, built now)."""
    cache = rootfs.cache_dir()
    key = wheel_set_key(wheels)
    root = cache / f"{rootfs.SUITE}-{ARCH}-edged-{key}"
    with (cache / f"{ARCH}-edged.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".edged-prepared").exists():
            return root, False
        tmp = root.with_name(root.name + ".partial")
        t0 = time.monotonic()
        rootfs.debian_root(ARCH, tmp)
        _install_dependencies(tmp, wheels)
        (tmp / ".edged-prepared").write_text(f"{time.monotonic() - t0:.0f} s\n")
        # One prepared root at a time: older wheel sets are dead weight (~600 MB each).
        for old in cache.glob(f"{rootfs.SUITE}-{ARCH}-edged-*"):
            if old != tmp:
                shutil.rmtree(old, ignore_errors=True)
        tmp.rename(root)
        return root, True


def fresh_copy(root: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", "--reflink=auto", str(root), str(dest)], check=True)
    (dest / ".edged-prepared").unlink(missing_ok=True)
    return dest
