"""A reader of tnetstrings as mitmproxy writes them (its flow files). Sans-IO.

A tnetstring is ``<length>:<payload><type>``: the length in ASCII digits, a colon, that many bytes
of payload, and one type character: ``,`` bytes, ``;`` text (UTF-8, mitmproxy's addition), ``#``
integer, ``^`` float, ``!`` boolean (``true``/``false``), ``~`` null (empty payload), ``]`` a list
of tnetstrings, ``}`` a dict of alternating keys and values. A flow file is a sequence of dicts,
one per flow. Dict keys are given as text, as mitmproxy reads them.

Hostile input is bounded: a length has at most :data:`MAX_DIGITS` digits and must fit in what is
left of the input, and nesting is at most :data:`MAX_DEPTH` deep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

Value: TypeAlias = "bool | int | float | bytes | str | list[Value] | dict[str, Value] | None"

#: Digits of a length: 12 is a terabyte, more than any flow.
MAX_DIGITS: Final = 12
#: A flow nests about 5 deep; more is not a flow.
MAX_DEPTH: Final = 32


class TNetStringError(ValueError):
    """Bytes that are not a tnetstring (the message says where)."""


def _item(data: bytes | memoryview, at: int) -> tuple[bytes | memoryview, int, int]:
    """The payload and type of the tnetstring at offset ``at`` of ``data``, and the offset after."""
    colon = bytes(data[at : at + MAX_DIGITS + 1]).find(b":")
    digits = bytes(data[at : at + colon]) if colon > 0 else b""
    if not digits.isdigit():
        raise TNetStringError(f"no length at byte {at}")
    start = at + colon + 1
    end = start + int(digits)
    if end >= len(data):
        raise TNetStringError(f"a value at byte {at} runs past the end")
    return data[start:end], data[end], end + 1


def loads(data: bytes) -> Value:
    """The one value ``data`` holds; raises :class:`TNetStringError`."""
    view = memoryview(data)
    value, end = _parse(view, 0, 0)
    if end != len(view):
        raise TNetStringError(f"{len(view) - end} bytes after the value")
    return value


def _parse(data: memoryview, at: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise TNetStringError(f"nested deeper than {MAX_DEPTH} at byte {at}")
    payload, kind, end = _item(data, at)
    start = end - 1 - len(payload)
    match kind:
        case 44:  # ,
            return bytes(payload), end
        case 59:  # ;
            try:
                return bytes(payload).decode("utf-8"), end
            except UnicodeDecodeError:
                raise TNetStringError(f"text at byte {at} is not UTF-8") from None
        case 35:  # #
            return _number(payload, at, int), end
        case 94:  # ^
            return _number(payload, at, float), end
        case 33:  # !
            if bytes(payload) not in (b"true", b"false"):
                raise TNetStringError(f"a boolean at byte {at} is neither true nor false")
            return bytes(payload) == b"true", end
        case 126:  # ~
            if payload:
                raise TNetStringError(f"a null at byte {at} has a payload")
            return None, end
        case 93:  # ]
            return _list(data, start, end - 1, depth), end
        case 125:  # }
            return _dict(data, start, end - 1, depth, at), end
    raise TNetStringError(f"unknown type {chr(kind)!r} at byte {at}")


def _number(payload: memoryview | bytes, at: int, kind: type[int | float]) -> int | float:
    try:
        return kind(bytes(payload).decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise TNetStringError(f"not a number at byte {at}") from None


def _list(data: memoryview, at: int, stop: int, depth: int) -> list[Value]:
    items: list[Value] = []
    inner = data[:stop]
    while at < stop:
        value, at = _parse(inner, at, depth + 1)
        items.append(value)
    return items


def _dict(data: memoryview, at: int, stop: int, depth: int, where: int) -> dict[str, Value]:
    items = _list(data, at, stop, depth)
    if len(items) % 2:
        raise TNetStringError(f"a dict at byte {where} has a key without a value")
    out: dict[str, Value] = {}
    for key, value in zip(items[::2], items[1::2], strict=True):
        if isinstance(key, bytes):
            key = key.decode("utf-8", "surrogateescape")
        if not isinstance(key, str):
            raise TNetStringError(f"a dict at byte {where} has a key that is not a string")
        out[key] = value
    return out


def iter_file(file: BinaryIO, limit: int) -> Iterator[Value]:
    """Each value of a file of concatenated tnetstrings, read one at a time (a value larger than
    ``limit`` bytes is an error, so memory stays bounded)."""
    offset = 0
    while True:
        head = file.read(MAX_DIGITS + 1)
        if not head.strip():
            return
        colon = head.find(b":")
        if colon <= 0 or not head[:colon].isdigit():
            raise TNetStringError(f"no length at byte {offset}")
        size = colon + 1 + int(head[:colon]) + 1
        if size > limit:
            raise TNetStringError(f"a value of {size} bytes at byte {offset}, over {limit}")
        data = head[:size] + file.read(max(0, size - len(head)))
        if len(data) < size:
            raise TNetStringError(f"the value at byte {offset} is cut short")
        value, _ = _parse(memoryview(data), 0, 0)
        file.seek(offset + size)
        offset += size
        yield value
