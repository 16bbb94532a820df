"""The system tests run on the host only.

Inside a systemd-nspawn container (where tests/system/test_quickstart.py runs the README's test
command in a fresh Debian) they skip: nspawn and binfmt cannot nest there, and each of them has
already run, on the host, in the same suite run.
"""

from __future__ import annotations

import pytest

from tests.system.rootfs import in_container


@pytest.fixture(autouse=True)
def _host_only() -> None:
    if in_container():
        pytest.skip("inside a container: the system tests run on the host")
