"""The inspector's URLs: the page, its static files, the JSON API, downloads and /metrics.

=====================================  =============================================================
``/``                                   the page (``/#/x/ID`` is one exchange)
``/static/NAME``                        its CSS and JavaScript, shipped in the package
``/api/summary``                        counts, progress and what the filters can choose from
``/api/exchanges?...``                  a page of the list: ``sort``, ``dir``, ``offset``,
                                        ``limit``, ``route``, ``status``, ``model``, ``since``,
                                        ``until``, ``finding``, ``q`` (text search)
``/api/changes?after=VERSION``          waits (up to ``wait`` seconds) until the table changes
``/api/exchanges/ID``                   one exchange in full
``/api/exchanges/ID/raw/PART``          exact bytes: request, upstream, response, request-body,
                                        response-body
``/api/exchanges/ID/har``               HAR 1.2 of this exchange
``/api/exchanges/ID/capture``           a capture file holding this exchange alone
``/metrics``                            Prometheus: tokens, TTFT and findings by model and code
=====================================  =============================================================

Access: bound to loopback, the inspector answers only requests whose Host is a loopback name (a
web page elsewhere cannot reach it through DNS rebinding). With a token, every request must carry
it: ``Authorization: Bearer TOKEN``, or the cookie that opening any URL with ``?token=TOKEN`` once
sets.
"""

from __future__ import annotations

import hmac
import importlib.resources
import re
from typing import TYPE_CHECKING, Final
from urllib.parse import urlencode

from wirecap import __version__
from wirecap.inspect.select import FilterError, parse_time
from wirecap.ui.http import Request, Response, error_response, is_loopback, json_response
from wirecap.ui.metrics import CONTENT_TYPE as METRICS_TYPE
from wirecap.ui.table import MAX_PAGE, Query, QueryError

if TYPE_CHECKING:
    from wirecap.ui.inspector import Inspector

COOKIE: Final = "wirecap_ui"
#: Longest a /api/changes request waits for a change before it answers anyway.
MAX_WAIT: Final = 25.0
_STATIC_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_EXCHANGE: Final = re.compile(
    r"^/api/exchanges/([0-9a-zA-Z_-]{1,64})(?:/(raw/[a-z-]+|har|capture))?$"
)
RAW_PARTS: Final = ("request", "upstream", "response", "request-body", "response-body")


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files shipped in ``wirecap/ui/static``: name -> (content, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in importlib.resources.files("wirecap.ui").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


def parse_query(params: dict[str, str]) -> Query:
    """A :class:`Query` from the list URL's parameters (:class:`QueryError` for a bad one)."""

    def number(name: str, default: int) -> int:
        try:
            return int(params.get(name) or default)
        except ValueError:
            raise QueryError(f"{name} must be a number") from None

    def moment(name: str) -> int | None:
        text = (params.get(name) or "").strip()
        if not text:
            return None
        try:
            return parse_time(text)
        except FilterError as exc:
            raise QueryError(f"{name}: {exc}") from None

    def text(name: str) -> str | None:
        return (params.get(name) or "").strip() or None

    return Query(
        route=text("route"),
        status=text("status"),
        model=text("model"),
        since_ns=moment("since"),
        until_ns=moment("until"),
        finding=text("finding"),
        text=text("q"),
        sort=params.get("sort") or "time",
        descending=params.get("dir", "desc") != "asc",
        offset=number("offset", 0),
        limit=min(number("limit", 100), MAX_PAGE),
    )


def _host_name(host: str) -> str:
    """The name part of a Host header (``[::1]:5610`` -> ``[::1]``, ``localhost:5610`` ->
    ``localhost``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Api:
    """Answers the inspector's requests (a :data:`~wirecap.ui.http.Handler`)."""

    def __init__(self, inspector: Inspector, *, token: str | None, loopback: bool) -> None:
        self.inspector = inspector
        self.token = token
        self.loopback = loopback
        self.static = static_files()

    async def __call__(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "the inspector only reads: GET")
        path = request.path
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path == "/metrics":
            return Response(200, self.inspector.metrics.exposition(), METRICS_TYPE)
        if path == "/api/summary":
            return json_response({**self.inspector.summary(), "wirecap_version": __version__})
        if path == "/api/exchanges":
            return await self._list(request)
        if path == "/api/changes":
            return await self._changes(request)
        match = _EXCHANGE.match(path)
        if match:
            return await self._exchange(match.group(1), match.group(2))
        return error_response(404, f"no such page: {path}")

    # -- access ----------------------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        if self.loopback and not is_loopback(_host_name(request.headers.get("host", ""))):
            return error_response(403, "the inspector answers requests for 127.0.0.1 or localhost")
        if self.token is None:
            return None
        given = request.query.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            rest = {k: v for k, v in request.query.items() if k != "token"}
            location = request.path + (f"?{urlencode(rest)}" if rest else "")
            return Response(
                303,
                b"",
                "text/plain",
                [
                    ("Location", location),
                    ("Set-Cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"),
                ],
            )
        bearer = request.headers.get("authorization", "")
        candidates = [request.cookie(COOKIE) or "", bearer.removeprefix("Bearer ").strip()]
        if any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates if c):
            return None
        return error_response(
            401, "this inspector needs its token: open it once as /?token=TOKEN, or send Bearer"
        )

    # -- pages -----------------------------------------------------------------------------------

    def _static(self, name: str) -> Response:
        found = self.static.get(name)
        if found is None:
            return error_response(404, f"no such file: {name}")
        return Response(200, found[0], found[1])

    async def _list(self, request: Request) -> Response:
        try:
            query = parse_query(request.query)
        except QueryError as exc:
            return error_response(400, str(exc))
        page = await self.inspector.query(query)
        return json_response(
            {
                "version": self.inspector.table.version,
                "total": page.total,
                "matched": page.matched,
                "offset": query.offset,
                "limit": query.limit,
                "rows": [r.to_json() for r in page.rows],
            }
        )

    async def _changes(self, request: Request) -> Response:
        try:
            after = int(request.query.get("after", "0"))
            wait = min(float(request.query.get("wait", MAX_WAIT)), MAX_WAIT)
        except ValueError:
            return error_response(400, "after and wait must be numbers")
        await self.inspector.wait_changed(after, wait)
        table = self.inspector.table
        return json_response(
            {"version": table.version, "changed": table.changed_since(after), **self._progress()}
        )

    def _progress(self) -> dict[str, object]:
        summary = self.inspector.summary()
        return {k: summary[k] for k in ("exchanges", "in_flight", "caught_up", "bytes_read")}

    async def _exchange(self, exchange_id: str, part: str | None) -> Response:
        row = self.inspector.table.resolve(exchange_id)
        if row is None:
            return error_response(404, f"no exchange {exchange_id!r} in the capture")
        if part is None:
            found = await self.inspector.detail(row)
            return error_response(404, "gone") if found is None else json_response(found)
        if part == "har":
            har = await self.inspector.har(row)
            if har is None:
                return error_response(404, "gone")
            return _attachment(har.encode(), "application/json", f"{row.id}.har")
        if part == "capture":
            data = await self.inspector.capture_file(row)
            if data is None:
                return error_response(404, "gone")
            return _attachment(data, "application/zstd", f"{row.id}.cbor.zst")
        kind = part.removeprefix("raw/")
        if kind not in RAW_PARTS:
            return error_response(404, f"raw parts: {', '.join(RAW_PARTS)}")
        raw = await self.inspector.raw(row, kind)
        if raw is None:
            return error_response(404, "gone")
        return _attachment(raw, "application/octet-stream", f"{row.id}-{kind}.bin")


def _attachment(data: bytes, content_type: str, name: str) -> Response:
    """A download: never shown inline, so captured HTML is never a page of this origin."""
    return Response(
        200, data, content_type, [("Content-Disposition", f'attachment; filename="{name}"')]
    )
