"""A platform without Linux's extras, for a second test run (.ci/run): with this directory on
PYTHONPATH and WIRECAP_TEST_PORTABLE=1, every Python process of the run (pytest, the proxy and its
writer process, pytester's inner sessions) starts without os.posix_fadvise, fcntl.F_SETPIPE_SZ,
os.memfd_create, os.eventfd and os.O_DIRECT, as on macOS. wirecap must work without them."""

from __future__ import annotations

import os

REMOVED = {
    "os": ("posix_fadvise", "POSIX_FADV_DONTNEED", "memfd_create", "eventfd", "O_DIRECT"),
    "fcntl": ("F_SETPIPE_SZ", "F_GETPIPE_SZ"),
}

if os.environ.get("WIRECAP_TEST_PORTABLE") == "1":
    import importlib

    for module_name, names in REMOVED.items():
        module = importlib.import_module(module_name)
        for name in names:
            if hasattr(module, name):
                delattr(module, name)
