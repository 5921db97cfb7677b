"""mitmproxy flow files (``mitmdump -w``, ``.mitm``/``.flow``) read into :class:`Imported`
exchanges, without mitmproxy.

A flow file is a sequence of tnetstring dicts (:mod:`wirecap.interop.tnetstring`), one per flow,
each with its format ``version``. mitmproxy 9 to 11 write versions 17 to 21, which differ only in
the connection fields; the HTTP fields read here are the same in all of them: ``request``
(``method``, ``scheme``, ``host``, ``port``, ``path``, ``http_version``, ``headers`` as
``[name, value]`` pairs, ``content``, ``timestamp_start``/``timestamp_end``) and ``response``
(``status_code``, ``reason``, ``headers``, ``content``, timestamps). Bodies are stored as they
crossed the wire, content coding included. Flows of other types (TCP, UDP, DNS), WebSocket flows
and requests that got no response are skipped and counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from wirecap.interop.build import Imported, Skipped, Source, Timings
from wirecap.interop.tnetstring import TNetStringError, iter_file

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import BinaryIO

#: The flow format versions mitmproxy 9 (17) to 11 (21) write.
VERSIONS: Final = range(17, 22)
#: A flow larger than this is not read (bodies of a flow are held while it is converted).
MAX_FLOW_BYTES: Final = 1024 * 1024 * 1024
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class FlowError(ValueError):
    """A file that is not a mitmproxy flow file (the message says why)."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else str(value)


def _headers(items: Any) -> list[tuple[str, str]]:
    return [
        (_text(pair[0]), _text(pair[1]))
        for pair in items or []
        if isinstance(pair, list) and len(pair) == 2
    ]


def _url(request: Mapping[str, Any]) -> str:
    scheme = _text(request.get("scheme")) or "http"
    host = _text(request.get("host"))
    port = request.get("port")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{_text(request.get('path')) or '/'}"


def _ns(seconds: Any) -> int | None:
    return int(seconds * 1e9) if isinstance(seconds, int | float) else None


def _timings(request: Mapping[str, Any], response: Mapping[str, Any]) -> Timings:
    start = _ns(request.get("timestamp_start")) or 0
    marks = [
        _ns(request.get("timestamp_end")),
        _ns(response.get("timestamp_start")),
        _ns(response.get("timestamp_end")),
    ]
    sent, head, end = (max((m or start) - start, 0) for m in marks)
    return Timings(request_end_ns=sent, response_ns=max(head, sent), end_ns=max(end, head, sent))


def flow_exchanges(file: BinaryIO, name: str) -> Iterator[Imported | Skipped]:
    """The exchanges of the flow file ``file`` (named ``name``); raises :class:`FlowError` for a
    file that does not read as flows."""
    try:
        for i, flow in enumerate(iter_file(file, MAX_FLOW_BYTES)):
            source = Source(format="mitmproxy", file=name, entry=i)
            if not isinstance(flow, dict) or "type" not in flow:
                raise FlowError(f"flow {i} is not a flow (a dict with a type)")
            yield _exchange(source, flow)
    except TNetStringError as exc:
        raise FlowError(f"not a mitmproxy flow file: {exc}") from None


def _exchange(source: Source, flow: Mapping[str, Any]) -> Imported | Skipped:
    version, kind = flow.get("version"), _text(flow.get("type"))
    if version not in VERSIONS:
        return Skipped(source=source, reason=f"flow format version {version} (read: 17 to 21)")
    if kind != "http":
        return Skipped(source=source, reason=f"{kind or 'untyped'} flow")
    if flow.get("websocket"):
        return Skipped(source=source, reason="WebSocket flow")
    request, response = flow.get("request"), flow.get("response")
    if not isinstance(request, dict):
        return Skipped(source=source, reason="flow without a request")
    if not isinstance(response, dict):
        error = flow.get("error")
        why = _text(error.get("msg")) if isinstance(error, dict) else ""
        return Skipped(source=source, reason=f"no response{': ' + why if why else ''}")
    notes = []
    for side, what in ((request, "request"), (response, "response")):
        if side.get("content") is None:
            notes.append(f"{what} body not in the flow")
    error = flow.get("error")
    if isinstance(error, dict) and error.get("msg"):
        notes.append(f"flow error: {_text(error['msg'])[:200]}")
    return Imported(
        source=source,
        method=_text(request.get("method")),
        url=_url(request),
        request_headers=_headers(request.get("headers")),
        request_body=request.get("content") or b"",
        status=int(response.get("status_code") or 0),
        reason=_text(response.get("reason")),
        response_headers=_headers(response.get("headers")),
        response_body=response.get("content") or b"",
        wall_ns=_ns(request.get("timestamp_start")) or 0,
        timings=_timings(request, response),
        http_version=_text(request.get("http_version")) or "HTTP/1.1",
        approximate=notes,
    )
