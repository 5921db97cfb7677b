"""Choosing a route for a request and rewriting its target for the upstream. Sans-IO.

The most specific route wins: the longest matching prefix first, then a route that names a host, then
one that names a method. Duplicates are rejected when the config is built, so the choice is unique.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from wirecap.proxy.config import Route


@dataclasses.dataclass(slots=True)
class RouteMatch:
    """A request's route (not frozen: built for every exchange, and a frozen dataclass's
    ``__init__`` costs twice as much)."""

    route: Route
    upstream_target: str  # path and query to send upstream

    @property
    def upstream_url(self) -> str:
        return self.route.upstream.origin_url + self.upstream_target


def split_target(target: str) -> tuple[str, str]:
    """``/a/b?q=1`` -> (``/a/b``, ``?q=1``). An absolute-form target keeps only its path and query."""
    if not target.startswith("/"):
        scheme_end = target.find("://")
        if scheme_end != -1:
            slash = target.find("/", scheme_end + 3)
            target = target[slash:] if slash != -1 else "/"
    path, sep, query = target.partition("?")
    return path, sep + query


def prefix_matches(prefix: str, path: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class Router:
    """Routes, sorted once by specificity so that matching is a short linear scan."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(
            routes,
            key=lambda r: (
                len(r.prefix) if r.prefix != "/" else 0,
                r.host is not None,
                r.method is not None,
            ),
            reverse=True,
        )

    def match(self, method: str, host: str | None, target: str) -> RouteMatch | None:
        """The route for a request, and the target to send upstream; None when no route matches."""
        path, query = split_target(target)
        bare_host = _strip_port(host).lower() if host else None
        for route in self.routes:
            if route.method is not None and route.method != method:
                continue
            if route.host is not None and route.host != bare_host:
                continue
            if not prefix_matches(route.prefix, path):
                continue
            rest = path if route.prefix == "/" else path[len(route.prefix) :]
            upstream_path = route.upstream.base_path + rest
            if not upstream_path.startswith("/"):
                upstream_path = "/" + upstream_path
            return RouteMatch(route, upstream_path + query)
        return None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
