"""VCR cassettes (VCR.py, pytest-recording, Ruby VCR) read into :class:`Imported` exchanges, and
captures written as VCR.py cassettes.

A cassette is YAML (or JSON, from vcrpy's json serializer): ``interactions`` of a ``request``
(``method``, ``uri``, ``body``, ``headers``) and a ``response`` (``status: {code, message}``,
``headers``, ``body: {string: ...}``). Headers are a map of lists (or of single values); a body is
text, bytes (YAML ``!!binary``: a gzip-coded answer recorded as it came), ``{string: ...}``, or
``{base64_string: ...}`` (Ruby VCR). vcrpy's older httpx shape (``status_code``, ``content``) is
read too. A cassette keeps no times and no raw heads: every exchange says so in its note.

YAML is read with PyYAML's safe loader (the ``vcr`` extra), taught only the harmless Python tags
vcrpy itself writes (text, tuples, a BytesIO body); any other tag is an error, never an object.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import io
import json
from typing import TYPE_CHECKING, Any, Final

from wirecap.interop.build import Imported, Skipped, Source

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import IO

    from wirecap.interop.export import Analyzed
    from wirecap.llm import Head

INSTALL_HINT: Final = "reading VCR cassettes needs PyYAML: pip install 'wirecap[vcr]'"


class CassetteError(ValueError):
    """A file that is not a cassette this reader understands (the message says why)."""


def load_cassette(data: bytes) -> Any:
    """The cassette document in ``data``: JSON if it is JSON, else YAML. Raises
    :class:`CassetteError` (also when PyYAML is needed and missing)."""
    text = data.decode("utf-8", "replace") if data[:1] in (b"{", b"[") else None
    if text is not None:
        try:
            return json.loads(text)
        except ValueError:
            pass
    yaml = yaml_module("reading")
    try:
        return yaml.load(data, Loader=_loader(yaml))
    except yaml.YAMLError as exc:
        raise CassetteError(f"not a readable YAML cassette: {_one_line(exc)}") from None


def yaml_module(doing: str = "reading") -> Any:
    """PyYAML, or :class:`CassetteError` naming the extra that brings it."""
    try:
        import yaml
    except ImportError:
        raise CassetteError(INSTALL_HINT.replace("reading", doing)) from None
    return yaml


def _loader(yaml: Any) -> Any:
    """PyYAML's (C) safe loader plus the plain Python tags vcrpy writes."""
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class CassetteLoader(base):  # type: ignore[misc,valid-type]
        pass

    def scalar(loader: Any, node: Any) -> Any:
        return loader.construct_scalar(node)

    def sequence(loader: Any, node: Any) -> Any:
        return tuple(loader.construct_sequence(node))

    def bytes_io(loader: Any, node: Any) -> Any:
        state = loader.construct_mapping(node, deep=True).get("state") or (b"",)
        return state[0] if state else b""

    tag = "tag:yaml.org,2002:python/"
    CassetteLoader.add_constructor(tag + "str", scalar)
    CassetteLoader.add_constructor(tag + "unicode", scalar)
    CassetteLoader.add_constructor(tag + "tuple", sequence)
    CassetteLoader.add_constructor(tag + "object/new:_io.BytesIO", bytes_io)
    return CassetteLoader


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def interactions(document: Any) -> list[Any] | None:
    """The interactions of a cassette document, or None when it is not a cassette."""
    if isinstance(document, dict):
        for key in ("interactions", "http_interactions"):
            found = document.get(key)
            if isinstance(found, list):
                return found
    return None


def header_pairs(headers: Any) -> list[tuple[str, str]]:
    """Headers as (name, value) pairs from a map of lists or values, or a list of pairs."""
    pairs: list[tuple[str, str]] = []
    items = headers.items() if isinstance(headers, dict) else headers or []
    for item in items:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            continue
        name, values = item
        listed = values if isinstance(values, list | tuple) else [values]
        pairs.extend((str(name), _text(v)) for v in listed if v is not None)
    return pairs


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def body_bytes(body: Any) -> bytes:
    """A cassette body as bytes: text (UTF-8), bytes, ``{string}``, ``{base64_string}``, None."""
    if isinstance(body, dict):
        if "base64_string" in body:
            try:
                return base64.b64decode(str(body["base64_string"]))
            except binascii.Error:
                raise CassetteError("a base64_string body is not base64") from None
        body = body.get("string")
    if body is None:
        return b""
    if isinstance(body, io.BytesIO):
        return body.getvalue()
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    if isinstance(body, list | dict):  # a JSON body some tools store parsed
        return json.dumps(body).encode()
    raise CassetteError(f"a body of type {type(body).__name__}")


def _status(response: Mapping[str, Any]) -> tuple[int, str]:
    status = response.get("status", response.get("status_code"))
    if isinstance(status, dict):
        code, message = status.get("code"), status.get("message")
    else:
        code, message = status, None
    try:
        return int(code), str(message or "")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CassetteError(f"response status {code!r} is not a number") from None


def _recorded_at(interaction: Mapping[str, Any], default_ns: int) -> tuple[int, bool]:
    """The interaction's wall time (Ruby VCR's ``recorded_at``), or ``default_ns``; and whether it
    was known."""
    text = interaction.get("recorded_at")
    if isinstance(text, str):
        try:
            return int(email.utils.parsedate_to_datetime(text).timestamp() * 1e9), True
        except (TypeError, ValueError):
            pass
    return default_ns, False


def vcr_exchanges(document: Any, file: str, file_ns: int) -> Iterator[Imported | Skipped]:
    """The exchanges of a cassette ``document`` read from ``file`` (``file_ns``: its time, the
    start time of interactions that carry none). Raises :class:`CassetteError`."""
    found = interactions(document)
    if found is None:
        raise CassetteError("no 'interactions' list: not a VCR cassette")
    for i, interaction in enumerate(found):
        source = Source(format="vcr", file=file, entry=i)
        if not isinstance(interaction, dict):
            yield Skipped(source=source, reason="an interaction that is not a map")
            continue
        request, response = interaction.get("request"), interaction.get("response")
        if not isinstance(request, dict) or not isinstance(response, dict):
            yield Skipped(source=source, reason="an interaction without request and response")
            continue
        try:
            yield _exchange(source, request, response, interaction, file_ns)
        except CassetteError as exc:
            yield Skipped(source=source, reason=str(exc))


def _exchange(
    source: Source,
    request: Mapping[str, Any],
    response: Mapping[str, Any],
    interaction: Mapping[str, Any],
    file_ns: int,
) -> Imported:
    status, message = _status(response)
    wall_ns, known = _recorded_at(interaction, file_ns)
    body = response["content"] if "content" in response else response.get("body")
    version = response.get("http_version")
    return Imported(
        source=source,
        method=str(request.get("method") or "GET").upper(),
        url=str(request.get("uri") or request.get("url") or ""),
        request_headers=header_pairs(request.get("headers")),
        request_body=body_bytes(request.get("body")),
        status=status,
        reason=message,
        response_headers=header_pairs(response.get("headers")),
        response_body=body_bytes(body),
        wall_ns=wall_ns,
        http_version=f"HTTP/{version}" if isinstance(version, str) and version else "HTTP/1.1",
        approximate=() if known else ("start time from the file's date",),
    )


# -- export --------------------------------------------------------------------------------------


def _header_map(head: Head | None) -> dict[str, list[str]]:
    """Headers as vcrpy writes them: each name (as recorded) with the list of its values."""
    out: dict[str, list[str]] = {}
    for name, value in head.headers if head is not None else ():
        if name.lower() != "x-proxy-path":
            out.setdefault(name, []).append(value)
    return out


def _body_value(data: bytes) -> str | bytes:
    """Text when ``data`` is UTF-8 (vcrpy's readable form), else bytes (YAML ``!!binary``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def interaction(a: Analyzed) -> dict[str, Any] | None:
    """The cassette interaction of one exchange, or None when it has no response. Bodies are
    the payload as it crossed the wire (content coding kept, as vcrpy records through httpx)."""
    ex = a.exchange
    if ex.response is None or ex.request is None:
        return None
    url = ex.upstream_url or ex.request.proxy_url or ex.target or "/"
    start = a.response_head.start_line.split(" ", 2) if a.response_head else []
    return {
        "request": {
            "body": _body_value(a.request_payload.join()) if a.request_payload.size else None,
            "headers": _header_map(a.request_head),
            "method": ex.method or "GET",
            "uri": url,
        },
        "response": {
            "body": {"string": _body_value(a.response_payload.join())},
            "headers": _header_map(a.response_head),
            "status": {"code": ex.response.status, "message": start[2] if len(start) > 2 else ""},
        },
    }


def write_vcr(analyzed: Iterable[Analyzed], out: IO[str]) -> tuple[int, int]:
    """Write a VCR.py cassette (YAML, format version 1) of ``analyzed``, one interaction at a
    time (memory holds one exchange); returns (interactions written, exchanges left out because
    they have no response). Raises :class:`CassetteError` when PyYAML is missing."""
    yaml = yaml_module("writing")
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    written = left_out = 0
    out.write("interactions:")
    for a in analyzed:
        item = interaction(a)
        if item is None:
            left_out += 1
            continue
        out.write("\n" if not written else "")
        out.write(yaml.dump([item], Dumper=dumper, allow_unicode=True, width=100))
        written += 1
    out.write("version: 1\n" if written else " []\nversion: 1\n")
    return written, left_out
