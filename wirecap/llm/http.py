"""Reading stored HTTP heads and decoding content codings for display. Sans-IO.

Stored bytes are never decoded in place; these helpers give analysis a decoded copy, bounded so that a
compression bomb in a capture cannot exhaust memory.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Final

import zstandard

#: Largest decoded body analysis looks at; beyond it the body is reported as too large to decode.
MAX_DECODED: Final = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """A parsed request or response head."""

    start_line: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    @property
    def status(self) -> int | None:
        parts = self.start_line.split(" ", 2)
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            return int(parts[1])
        return None

    @property
    def content_type(self) -> str:
        return (self.get("content-type") or "").split(";")[0].strip().lower()


def parse_head(raw: bytes) -> Head:
    """Parse a head's start line and header lines (lenient: analysis must not fail on odd bytes)."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return Head(lines[0] if lines else "", tuple(headers))


class DecodeError(ValueError):
    """A body whose content coding cannot be undone (unknown, corrupt, or too large)."""


def decode_content(body: bytes, encoding: str | None, limit: int = MAX_DECODED) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, br, zstd, or a comma-separated chain of them)."""
    if not encoding:
        return body
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        body = _decode_one(body, coding, limit)
    return body


def _decode_one(body: bytes, coding: str, limit: int) -> bytes:
    try:
        if coding in ("gzip", "x-gzip"):
            return _zlib(body, zlib.MAX_WBITS | 16, limit)
        if coding == "deflate":
            try:
                return _zlib(body, zlib.MAX_WBITS, limit)
            except zlib.error:
                return _zlib(body, -zlib.MAX_WBITS, limit)  # raw deflate, as some servers send
        if coding == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(
                body, read_across_frames=True
            ) as reader:
                out = reader.read(limit + 1)
            if len(out) > limit:
                raise DecodeError(f"zstd body decodes past {limit} bytes")
            return bytes(out)
        if coding == "br":
            try:
                import brotli  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError:
                raise DecodeError("br body: install the 'brotli' package to decode it") from None
            decoder = brotli.Decompressor()
            try:
                out = decoder.process(body, output_buffer_limit=limit + 1)
            except brotli.error as exc:
                raise DecodeError(f"br body is corrupt: {exc}") from exc
            if len(out) > limit:
                raise DecodeError(f"br body decodes past {limit} bytes")
            return bytes(out)
    except (zlib.error, zstandard.ZstdError) as exc:
        raise DecodeError(f"{coding} body is corrupt: {exc}") from exc
    raise DecodeError(f"unknown content coding {coding!r}")


def _zlib(body: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)
    if len(out) > limit:
        raise DecodeError(f"body decodes past {limit} bytes")
    return out
