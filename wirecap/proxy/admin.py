"""The admin listener of ``wirecap proxy --admin``: ``/healthz``, ``/readyz`` and ``/metrics``.

A small trio + h11 server, apart from the proxy's listener and its hot path: each request is
answered from the proxy's state (:class:`~wirecap.proxy.metrics.ProxyMetrics` and the readiness
checks below) and nothing it does touches an exchange.

- ``GET /healthz``: 200 while the process runs.
- ``GET /readyz``: 200 when the proxy accepts connections, every route's upstream takes a
  connection (TCP, and TLS for ``https``), the capture writer is alive and the capture directory's
  disk has more free space than ``ready_min_free_disk``; else 503. Both answers are JSON listing
  each check; a 503 names what is wrong in ``problems``. Upstream probes run concurrently and
  their result is kept :data:`PROBE_CACHE_SECONDS`, so frequent probes do not hammer upstreams.
- ``GET /metrics``: the Prometheus text format.

With a token, every request must carry ``Authorization: Bearer <token>`` (else 401).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import shutil
from typing import TYPE_CHECKING, Any, Final, Protocol

import h11
import trio

from wirecap.proxy.upstream import ConnectionPool, UpstreamError, make_ssl_context

if TYPE_CHECKING:
    from pathlib import Path

    from wirecap.capture.writer import WriterStatistics
    from wirecap.proxy.config import AdminSettings, DiskThreshold, ProxyConfig, Upstream

logger = logging.getLogger("wirecap.proxy.admin")

#: Seconds an upstream has to take a probe connection before it counts as unreachable.
PROBE_TIMEOUT: Final = 2.0
#: Seconds a probe's result is reused: a probe every few seconds from several checkers costs one.
PROBE_CACHE_SECONDS: Final = 2.0
#: Seconds a client has to send a whole request; admin requests are small GETs.
REQUEST_TIMEOUT: Final = 10.0
#: Largest request head or body the admin listener reads (a GET has no body).
MAX_REQUEST: Final = 16 * 1024
PATHS: Final = ("/healthz", "/readyz", "/metrics")


class AdminListenError(OSError):
    """The admin address cannot be bound (taken, or not this machine's)."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.address = f"{host}:{port}"


class ProxyView(Protocol):
    """What the admin listener reads of a proxy: a
    :class:`~wirecap.proxy.server.ProxyServer`, or the supervisor of ``--workers``."""

    @property
    def config(self) -> ProxyConfig: ...

    def not_accepting(self) -> str | None:
        """Why the proxy takes no new connections; None while it does."""
        ...

    def capture_statistics(self) -> WriterStatistics | None:
        """The capture writer's statistics; None when capture is off."""
        ...


class MetricsView(Protocol):
    """What serves ``/metrics``: :class:`~wirecap.proxy.metrics.ProxyMetrics`, or the sum of the
    workers' series."""

    def render(self, accept: str = "") -> tuple[bytes, str]: ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One readiness check: what was checked, whether it passed, and if not, why in one sentence."""

    check: str
    ok: bool
    problem: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, **self.details}


def readiness_answer(checks: list[Check]) -> tuple[int, dict[str, Any]]:
    """The status (200 or 503) and JSON body of ``/readyz`` for ``checks``. Sans-IO."""
    problems = [c.problem or c.check for c in checks if not c.ok]
    body = {"ready": not problems, "problems": problems, "checks": [c.as_json() for c in checks]}
    return (503 if problems else 200), body


def disk_check(directory: Path, free: int, total: int, threshold: DiskThreshold) -> Check:
    """Whether ``free`` bytes of a ``total``-byte disk meet ``threshold``. Sans-IO."""
    required = threshold.required(total)
    details = {"path": str(directory), "free_bytes": free, "required_bytes": required}
    if free >= required:
        return Check(check="free_disk", ok=True, details=details)
    problem = f"free disk for {directory} is {_mib(free)}, below the threshold of {_mib(required)}"
    return Check(check="free_disk", ok=False, problem=problem, details=details)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class Readiness:
    """The checks behind ``/readyz``, run against a live proxy."""

    def __init__(self, proxy: ProxyView, min_free_disk: DiskThreshold) -> None:
        self.proxy = proxy
        self.min_free_disk = min_free_disk
        config = proxy.config
        trusted = config.upstream_ca
        self._probes = ConnectionPool(
            connect_timeout=PROBE_TIMEOUT,
            idle_timeout=0,
            read_size=config.limits.upstream_read_size,
            max_head=config.limits.max_head,
            max_idle_per_origin=0,
            # The proxy's own trust: its extra CA bundle, if any.
            ssl_context=make_ssl_context(trusted) if trusted and self._has_https() else None,
        )
        #: Seconds a probe's result is reused.
        self.cache_seconds = PROBE_CACHE_SECONDS
        self._lock = trio.Lock()
        self._probed_at = -float("inf")
        self._upstream_checks: list[Check] = []

    def _has_https(self) -> bool:
        return any(r.upstream.scheme == "https" for r in self.proxy.config.routes)

    async def checks(self) -> list[Check]:
        """Every check, the upstream probes at most :attr:`cache_seconds` old."""
        checks = [self._accepting()]
        checks += await self._upstreams()
        capture = self.proxy.capture_statistics()
        if capture is not None:
            failed = capture.failed
            if failed is None:
                checks.append(Check(check="capture_writer", ok=True))
            else:
                checks.append(
                    Check(check="capture_writer", ok=False, problem=f"capture stopped: {failed}")
                )
            checks.append(await self._disk())
        return checks

    def _accepting(self) -> Check:
        problem = self.proxy.not_accepting()
        if problem is not None:
            return Check(check="accepting", ok=False, problem=problem)
        return Check(check="accepting", ok=True)

    async def _upstreams(self) -> list[Check]:
        async with self._lock:  # a probe under way serves whoever asks meanwhile
            if trio.current_time() - self._probed_at >= self.cache_seconds:
                self._upstream_checks = await self._probe_all()
                self._probed_at = trio.current_time()
            return self._upstream_checks

    async def _probe_all(self) -> list[Check]:
        """One probe per upstream origin, all at once; each names the routes that use it."""
        routes: dict[tuple[str, str, int], list[str]] = {}
        upstreams: dict[tuple[str, str, int], Upstream] = {}
        for route in self.proxy.config.routes:
            upstreams.setdefault(route.upstream.origin, route.upstream)
            routes.setdefault(route.upstream.origin, []).append(route.describe())
        results: dict[tuple[str, str, int], str | None] = {}

        async def probe(origin: tuple[str, str, int]) -> None:
            results[origin] = await self._probe(upstreams[origin])

        async with trio.open_nursery() as nursery:
            for origin in upstreams:
                nursery.start_soon(probe, origin)
        checks = []
        for origin, upstream in upstreams.items():
            error = results[origin]
            details = {"upstream": upstream.origin_url, "routes": routes[origin]}
            if error is not None:
                details["error"] = error
                names = ", ".join(routes[origin])
                problem = f"upstream {upstream.origin_url} (routes {names}) is unreachable: {error}"
                checks.append(Check(check="upstream", ok=False, problem=problem, details=details))
            else:
                checks.append(Check(check="upstream", ok=True, details=details))
        return checks

    async def _probe(self, upstream: Upstream) -> str | None:
        """None when ``upstream`` takes a connection, else why not."""
        try:
            conn = await self._probes.acquire(upstream)
        except UpstreamError as exc:
            return str(exc)
        await conn.aclose()
        return None

    async def _disk(self) -> Check:
        directory = self.proxy.config.capture.out
        try:
            usage = await trio.to_thread.run_sync(shutil.disk_usage, directory)
        except OSError as exc:
            problem = f"cannot read the free disk of {directory}: {exc.strerror or exc}"
            return Check(check="free_disk", ok=False, problem=problem)
        return disk_check(directory, usage.free, usage.total, self.min_free_disk)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def json_answer(status: int, payload: dict[str, Any], *extra: tuple[str, str]) -> Answer:
    body = json.dumps(payload, indent=1).encode() + b"\n"
    return Answer(status, "application/json", body, extra)


def authorized(token: str | None, authorization: bytes | None) -> bool:
    """Whether a request's Authorization header carries ``token`` (always, without a token).
    Compared in constant time, as bytes (a token may be any printable text)."""
    if token is None:
        return True
    scheme, _, given = (authorization or b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode())


class AdminServer:
    """The admin listener. ``await nursery.start(admin.run)`` binds it and returns (host, port)."""

    def __init__(self, proxy: ProxyView, settings: AdminSettings, metrics: MetricsView) -> None:
        assert settings.address is not None
        self.host, self.port = settings.address
        self.token = settings.token
        self.metrics = metrics
        self.readiness = Readiness(proxy, settings.min_free_disk)
        self._listeners: list[trio.SocketListener] = []

    async def bind(self) -> tuple[str, int]:
        """Open the listening sockets; raises :class:`AdminListenError`."""
        try:
            self._listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise AdminListenError(self.host, self.port, exc) from exc
        self.port = self._listeners[0].socket.getsockname()[1]
        return self.host, self.port

    @property
    def listeners(self) -> list[trio.SocketListener]:
        """The listening sockets, once bound."""
        return self._listeners

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled (binding first unless :meth:`bind` was called)."""
        if not self._listeners:
            await self.bind()
        task_status.started((self.host, self.port))
        await trio.serve_listeners(self._connection, self._listeners)

    async def answer(self, request: h11.Request) -> Answer:
        """The answer to one request."""
        method, target = request.method, request.target
        if not authorized(self.token, _header(request, b"authorization")):
            return json_answer(
                401, {"error": "a bearer token is required"}, ("WWW-Authenticate", "Bearer")
            )
        path = target.decode("latin-1").partition("?")[0]
        if path not in PATHS:
            return json_answer(404, {"error": f"no {path}", "paths": list(PATHS)})
        if method not in (b"GET", b"HEAD"):
            return json_answer(405, {"error": "only GET and HEAD"}, ("Allow", "GET, HEAD"))
        if path == "/healthz":
            return json_answer(200, {"status": "alive"})
        if path == "/readyz":
            status, report = readiness_answer(await self.readiness.checks())
            return json_answer(status, report)
        accept = (_header(request, b"accept") or b"").decode("latin-1")
        body, content_type = self.metrics.render(accept)
        return Answer(200, content_type, body)

    async def _connection(self, stream: trio.SocketStream) -> None:
        """Answer the requests of one connection (keep-alive), each read and written within
        :data:`REQUEST_TIMEOUT`; a malformed one gets 400 and the connection closes."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            while True:
                request = None
                with trio.move_on_after(REQUEST_TIMEOUT):
                    try:
                        request = await _read_request(conn, stream)
                    except h11.RemoteProtocolError as exc:
                        answer = json_answer(exc.error_status_hint, {"error": str(exc)})
                        await _send(conn, stream, answer, head_only=False)
                if request is None:
                    return
                answer = await self.answer(request)
                with trio.move_on_after(REQUEST_TIMEOUT):
                    await _send(conn, stream, answer, head_only=request.method == b"HEAD")
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The next request, its body read and dropped (bounded); None at the end of the connection.
    Raises :class:`h11.RemoteProtocolError` for a malformed or oversize request."""
    request = None
    body = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(MAX_REQUEST))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > MAX_REQUEST:
                raise h11.RemoteProtocolError("request body too large")
        elif isinstance(event, h11.EndOfMessage):
            return request
        else:
            return None  # ConnectionClosed


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


async def _send(
    conn: h11.Connection, stream: trio.SocketStream, answer: Answer, *, head_only: bool
) -> None:
    headers = [
        ("Content-Type", answer.content_type),
        ("Content-Length", str(len(answer.body))),
        ("Cache-Control", "no-store"),
        *answer.headers,
    ]
    data = conn.send(h11.Response(status_code=answer.status, headers=headers))
    if not head_only:
        data = (data or b"") + (conn.send(h11.Data(data=answer.body)) or b"")
    data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)
