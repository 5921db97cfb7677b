"""The portable run (.ci/run's second pass, tests/portable/sitecustomize.py) really removes the
Linux-only calls, in this process and in the processes it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("WIRECAP_TEST_PORTABLE") != "1", reason="only in the portable run"
)

CHECK = """
import fcntl, os
present = [n for n in ("posix_fadvise", "memfd_create", "eventfd", "O_DIRECT") if hasattr(os, n)]
present += [n for n in ("F_SETPIPE_SZ",) if hasattr(fcntl, n)]
print(present)
"""


def test_the_linux_extras_are_gone_here_and_in_child_processes():
    here = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert here.stdout.strip() == "[]"
    import fcntl

    assert not hasattr(os, "posix_fadvise") and not hasattr(fcntl, "F_SETPIPE_SZ")
