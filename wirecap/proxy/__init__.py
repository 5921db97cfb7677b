"""The recording reverse proxy (trio; HTTP/1.1 framing in http1.py). Imports wirecap.capture only.

The names below are imported on first use (PEP 562), so that the capture writer process, which
unpickles the redactor from proxy/redact.py, does not import trio and the server to start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wirecap.proxy.app import make_redactor, make_writer, run_proxy
    from wirecap.proxy.config import ConfigError, ProxyConfig, Route, build_config
    from wirecap.proxy.server import ProxyServer

__all__ = [
    "ConfigError",
    "ProxyConfig",
    "ProxyServer",
    "Route",
    "build_config",
    "make_redactor",
    "make_writer",
    "run_proxy",
]

_HOMES = {
    "make_redactor": "app",
    "make_writer": "app",
    "run_proxy": "app",
    "ConfigError": "config",
    "ProxyConfig": "config",
    "Route": "config",
    "build_config": "config",
    "ProxyServer": "server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'wirecap.proxy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wirecap.proxy.{home}"), name)
