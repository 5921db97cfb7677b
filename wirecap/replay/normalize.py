"""Turning bodies into comparable data: volatile fields dropped, JSON paths ignored, shapes. Sans-IO.

Shared by replay (comparing a new answer with the recorded one) and serve (matching a request with the
recorded ones).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Keys whose values change on every call: ids, timestamps, fingerprints, request ids, durations.
VOLATILE_KEYS: Final = frozenset(
    {
        "id",
        "created",
        "created_at",
        "createdAt",
        "completed_at",
        "system_fingerprint",
        "request_id",
        "x_request_id",
        "timestamp",
        "date",
        "call_id",
        "item_id",
        "tool_call_id",
        "service_tier",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    }
)

_PATH_TOKEN: Final = re.compile(r"\.([A-Za-z_][\w\-]*)|\[(\d+|\*)\]|\['([^']*)'\]")


class PathError(ValueError):
    """A --ignore path that does not parse."""


def parse_path(path: str) -> list[str | int | None]:
    """``$.choices[*].message.content`` -> ``["choices", None, "message", "content"]`` (None: any index)."""
    text = path.strip()
    text = text.removeprefix("$")
    if text and not text.startswith((".", "[")):
        text = "." + text
    steps: list[str | int | None] = []
    pos = 0
    while pos < len(text):
        match = _PATH_TOKEN.match(text, pos)
        if not match:
            raise PathError(f"bad JSON path {path!r} (try $.usage or $.choices[*].message.content)")
        name, index, quoted = match.groups()
        if name is not None:
            steps.append(name)
        elif quoted is not None:
            steps.append(quoted)
        else:
            steps.append(None if index == "*" else int(index))
        pos = match.end()
    if not steps:
        raise PathError(f"empty JSON path {path!r}")
    return steps


def drop_path(value: Any, steps: list[str | int | None]) -> Any:
    """``value`` without what ``steps`` points at (a copy; the input is not changed)."""
    if not steps:
        return _REMOVED
    head, rest = steps[0], steps[1:]
    if isinstance(value, dict) and isinstance(head, str):
        if head not in value:
            return value
        out = dict(value)
        inner = drop_path(out[head], rest)
        if inner is _REMOVED:
            del out[head]
        else:
            out[head] = inner
        return out
    if isinstance(value, list) and not isinstance(head, str):
        out_list = []
        for i, item in enumerate(value):
            if head is None or head == i:
                inner = drop_path(item, rest)
                if inner is not _REMOVED:
                    out_list.append(inner)
            else:
                out_list.append(item)
        return out_list
    return value


class _Removed:
    pass


_REMOVED: Final = _Removed()


def drop_volatile(value: Any, keys: frozenset[str] = VOLATILE_KEYS) -> Any:
    """``value`` with every key in ``keys`` removed at any depth."""
    if isinstance(value, dict):
        return {k: drop_volatile(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [drop_volatile(v, keys) for v in value]
    return value


def decode_tool_arguments(value: Any) -> Any:
    """``value`` with every ``"arguments"`` string that holds JSON replaced by that JSON's data.

    OpenAI's APIs carry a tool call's arguments as a JSON document inside a string; a stream's are
    reassembled and parsed. Decoding both means ``{"city":"Berlin"}`` and ``{"city": "Berlin"}``
    compare as the same call whether the answer was streamed or not. Strings that are not JSON
    stay as they are."""
    if isinstance(value, dict):
        return {
            k: (
                _json_or_text(v)
                if k == "arguments" and isinstance(v, str)
                else decode_tool_arguments(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [decode_tool_arguments(v) for v in value]
    return value


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def normalize(
    value: Any, ignore: Iterable[list[str | int | None]] = (), *, volatile: bool = True
) -> Any:
    """Tool-call arguments decoded, volatile keys dropped (when asked), then every ignored path."""
    value = decode_tool_arguments(value)
    if volatile:
        value = drop_volatile(value)
    for steps in ignore:
        value = drop_path(value, steps)
    return value


def shape(value: Any) -> Any:
    """The type skeleton of a JSON value: keys and types, not values (for non-deterministic models)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes = []
        for item in value:
            s = shape(item)
            if s not in shapes:
                shapes.append(s)
        return shapes
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null"


def canonical(value: Any) -> str:
    """Stable text of a JSON value (sorted keys), for hashing and diffs."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, indent=2)


def loads_or_none(data: bytes) -> Any:
    try:
        return json.loads(data) if data.strip() else None
    except (ValueError, UnicodeDecodeError):
        return None
