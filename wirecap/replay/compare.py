"""Comparing a replayed response with the recorded one. Sans-IO.

Modes, strictest first:

- ``exact``: status, the selected headers (Content-Type by default) and the body bytes;
- ``json`` (default): JSON bodies compared as data, streams as their reassembled result (text, tool
  calls, finish reason), never by chunk boundaries; tool-call arguments (a JSON document in a
  string) compared as data, streamed or not; volatile fields (ids,
  timestamps, fingerprints, request ids, durations) and ``--ignore`` paths left out;
- ``schema``: the same structures reduced to their shape (keys and types), for models that do not
  answer the same twice;
- ``status``: the status code only.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import TYPE_CHECKING, Any, Final, Literal

from wirecap.llm import ExchangeInput, LLMFacts, SSEParser, TimedChunks, analyze
from wirecap.replay.normalize import canonical, loads_or_none, normalize, shape

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

Mode = Literal["exact", "json", "schema", "status"]
MODES: Final = ("exact", "json", "schema", "status")


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    diff: str = ""  # a unified diff, recorded -> replayed
    summary: str = ""  # one line: what differs


def reassembled(facts: LLMFacts) -> dict[str, Any]:
    """What a stream says once reassembled: the comparable result of an LLM stream."""
    return {
        "text": facts.text,
        "tool_calls": [{"name": t.name, "arguments": t.arguments} for t in facts.tool_calls],
        "finish_reason": facts.finish_reason,
    }


#: A body up to this size is compared as data (parsed, volatile fields left out); a larger one,
#: in every mode but ``status``, by its size and SHA-256, streamed: comparing two large bodies
#: as data would hold both, decoded and parsed, several times over.
WHOLE_BODY_MAX: Final = 8 * 1024 * 1024


def comparable(
    inp: ExchangeInput, mode: Mode, ignore: Sequence[list[str | int | None]] = ()
) -> Any:
    """The structure ``mode`` compares for one response."""
    if mode == "status":
        return {"status": inp.status}
    content_type = inp.content_type
    chunks = inp.response_chunks
    if chunks.size > WHOLE_BODY_MAX or chunks.digest is not None:
        large = {"bytes": chunks.size, "sha256": chunks.sha256()}
        result = {"status": inp.status, "content-type": content_type, "large body": large}
        return shape(result) if mode == "schema" else result
    body = inp.response_body
    if mode == "exact":
        return {
            "status": inp.status,
            "content-type": content_type,
            "body": body.decode("utf-8", "replace"),
        }
    facts = analyze(inp)
    if facts.streamed and facts.api != "http":
        data: Any = normalize(reassembled(facts), ignore, volatile=False)
    elif content_type == "text/event-stream":
        parser = SSEParser()
        events = [e for ns, chunk in inp.response_chunks for e in parser.feed(chunk, ns)]
        data = [normalize(loads_or_none(e.data.encode()) or e.data, ignore) for e in events]
    else:
        parsed = loads_or_none(body)
        data = normalize(parsed, ignore) if parsed is not None else body.decode("utf-8", "replace")
    result = {"status": inp.status, "body": data}
    return shape(result) if mode == "schema" else result


def compare(
    recorded: ExchangeInput,
    replayed: ExchangeInput,
    mode: Mode = "json",
    ignore: Sequence[list[str | int | None]] = (),
) -> Verdict:
    """PASS when the two responses agree under ``mode``; otherwise FAIL with a diff."""
    if mode == "exact" and _differ(recorded.response_chunks, replayed.response_chunks):
        return _verdict(
            comparable(recorded, mode, ignore),
            comparable(replayed, mode, ignore),
            force_fail="body bytes differ",
        )
    return _verdict(comparable(recorded, mode, ignore), comparable(replayed, mode, ignore))


def _differ(a: TimedChunks, b: TimedChunks) -> bool:
    """Whether two bodies differ, told by their sizes and then their digests (streamed)."""
    return a.size != b.size or a.sha256() != b.sha256()


def _verdict(a: Any, b: Any, force_fail: str | None = None) -> Verdict:
    if a == b and force_fail is None:
        return Verdict(True)
    before, after = canonical(a).splitlines(), canonical(b).splitlines()
    diff = "\n".join(difflib.unified_diff(before, after, "recorded", "replayed", lineterm="", n=2))
    return Verdict(False, diff, force_fail or first_difference(a, b))


def first_difference(a: Any, b: Any, path: str = "$") -> str:
    """The first place where two structures differ, as a JSON path."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b:
                return f"{path}.{key} is missing"
            if key not in a:
                return f"{path}.{key} is new"
            if a[key] != b[key]:
                return first_difference(a[key], b[key], f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            return f"{path} has {len(b)} items instead of {len(a)}"
    return f"{path} differs: {_short(a)} -> {_short(b)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_ignores(paths: Iterable[str]) -> list[list[str | int | None]]:
    from wirecap.replay.normalize import parse_path

    return [parse_path(p) for p in paths]
