"""The recording reverse proxy (trio + h11). Imports wirecap.capture only."""

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
