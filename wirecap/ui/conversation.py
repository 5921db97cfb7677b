"""A request read as a conversation, and the thinking in an answer, for the detail view. Sans-IO.

The providers shape the same ideas differently: OpenAI chat ``messages`` with ``tool_calls``, the
responses API's ``instructions`` and ``input`` items, Anthropic's ``system`` and content blocks
(``tool_use``, ``tool_result``, ``thinking``), Ollama's ``messages`` and ``prompt``. Each becomes a
list of :class:`Message` made of :class:`Part` so the page draws every one the same way.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Final

from wirecap.llm import NDJSONParser, SSEParser

if TYPE_CHECKING:
    from collections.abc import Iterator

    from wirecap.inspect.analysis import Analyzed

#: Text of one part shown at most (the raw view and the downloads have everything).
PART_CHARS: Final = 100_000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """One piece of a message: ``text``, ``image``, ``tool_call``, ``tool_result``,
    ``thinking`` or ``other``."""

    kind: str
    text: str = ""
    name: str | None = None
    id: str | None = None
    arguments: str | None = None  # a tool call's argument string, as sent

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "text": self.text[:PART_CHARS]}
        if self.name is not None:
            out["name"] = self.name
        if self.id is not None:
            out["id"] = self.id
        if self.arguments is not None:
            out.update(arguments_json(self.arguments))
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    role: str
    parts: tuple[Part, ...]

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "parts": [p.to_json() for p in self.parts]}


def arguments_json(arguments: str) -> dict[str, Any]:
    """A tool call's arguments for the page: as sent, and parsed when they are JSON."""
    try:
        return {"arguments": arguments[:PART_CHARS], "parsed": json.loads(arguments)}
    except ValueError as exc:
        return {"arguments": arguments[:PART_CHARS], "parsed": None, "error": str(exc)}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _arguments(value: Any) -> str:
    """Arguments as a string: OpenAI sends a JSON string, Anthropic and Ollama an object."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _image(block: dict[str, Any]) -> Part:
    source = block.get("image_url") or block.get("source") or block.get("url") or ""
    if isinstance(source, dict):
        source = source.get("url") or source.get("media_type") or source.get("type") or ""
    where = str(source)
    if where.startswith("data:"):
        where = f"{where.split(',', 1)[0]} ({len(where)} characters)"
    return Part(kind="image", text=where)


def _block(block: Any) -> Part:
    """One content block of any provider."""
    if isinstance(block, str):
        return Part(kind="text", text=block)
    if not isinstance(block, dict):
        return Part(kind="other", text=_text(block))
    kind = block.get("type")
    if kind in ("text", "input_text", "output_text") or (kind is None and "text" in block):
        return Part(kind="text", text=_text(block.get("text", "")))
    if kind in ("image_url", "image", "input_image"):
        return _image(block)
    if kind in ("tool_use", "server_tool_use", "function_call"):
        return Part(
            kind="tool_call",
            name=block.get("name"),
            id=block.get("id") or block.get("call_id"),
            arguments=_arguments(block.get("input", block.get("arguments", {}))),
        )
    if kind in ("tool_result", "function_call_output"):
        content = block.get("content", block.get("output", ""))
        text = "\n".join(p.text for p in _parts(content)) if isinstance(content, list) else content
        return Part(
            kind="tool_result",
            id=block.get("tool_use_id") or block.get("call_id"),
            text=_text(text),
        )
    if kind in ("thinking", "redacted_thinking", "reasoning"):
        summary = block.get("summary")
        text = block.get("thinking") or (
            "\n".join(_text(s.get("text", "")) for s in summary if isinstance(s, dict))
            if isinstance(summary, list)
            else ""
        )
        return Part(kind="thinking", text=_text(text or "(redacted)"))
    return Part(kind="other", text=_text(block))


def _parts(content: Any) -> list[Part]:
    if content is None or content == "":
        return []
    if isinstance(content, list):
        return [_block(b) for b in content]
    return [_block(content)]


def _message(item: dict[str, Any]) -> Message:
    """One entry of ``messages`` or ``input``."""
    kind = item.get("type")
    if kind in ("function_call", "function_call_output", "reasoning"):
        role = "tool" if kind == "function_call_output" else "assistant"
        return Message(role, (_block(item),))
    parts = _parts(item.get("content"))
    for call in item.get("tool_calls") or []:
        if isinstance(call, dict):
            function: dict[str, Any] = (
                call["function"] if isinstance(call.get("function"), dict) else call
            )
            parts.append(
                Part(
                    kind="tool_call",
                    name=function.get("name"),
                    id=call.get("id"),
                    arguments=_arguments(function.get("arguments", "")),
                )
            )
    if item.get("thinking"):  # Ollama
        parts.insert(0, Part(kind="thinking", text=_text(item["thinking"])))
    role = str(item.get("role") or "user")
    if role == "tool" and item.get("tool_call_id"):
        parts = [
            dataclasses.replace(p, id=item["tool_call_id"]) if p.kind == "text" else p
            for p in parts
        ]
    return Message(role, tuple(parts))


def conversation(body: Any) -> list[Message]:
    """The messages of a request body (decoded JSON), system prompt first; empty when the body
    has none of the known shapes."""
    if not isinstance(body, dict):
        return []
    found = [
        Message("system", tuple(_parts(body[key])))
        for key in ("system", "instructions")
        if body.get(key)
    ]
    for key in ("messages", "input"):
        items = body.get(key)
        if isinstance(items, str):
            found.append(Message("user", (Part(kind="text", text=items),)))
        elif isinstance(items, list):
            found.extend(
                _message(i) if isinstance(i, dict) else Message("user", (_block(i),)) for i in items
            )
    if isinstance(body.get("prompt"), str):
        found.append(Message("user", (Part(kind="text", text=body["prompt"]),)))
    return found


def response_values(a: Analyzed) -> Iterator[Any]:
    """Each JSON value of the response: every SSE event's data, every NDJSON line, or the body."""
    content_type = a.response_head.content_type if a.response_head else ""
    if content_type == "text/event-stream":
        parser = SSEParser()
        for ns, chunk in a.response_chunks:
            for event in parser.feed(chunk, ns):
                yield _loads(event.data)
    elif "ndjson" in content_type or (a.facts.api.startswith("ollama") and a.facts.streamed):
        lines = NDJSONParser()
        for ns, chunk in a.response_chunks:
            for line in lines.feed(chunk, ns):
                yield line.value
        tail = lines.close()
        if tail is not None:
            yield tail.value
    else:
        yield _loads(b"".join(c for _, c in a.response_chunks))


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except (ValueError, UnicodeDecodeError):
        return None


def thinking_of(a: Analyzed) -> str:
    """The model's thinking or reasoning in the answer, reassembled (empty when there is none):
    Anthropic ``thinking`` blocks and deltas, ``reasoning_content``/``reasoning`` of
    OpenAI-compatible servers, the responses API's reasoning summaries, Ollama's ``thinking``."""
    if a.facts.api == "http":
        return ""
    body = b"".join(chunk for _, chunk in a.response_chunks)
    if b"thinking" not in body and b"reasoning" not in body:
        return ""  # most answers have none: they are not parsed again
    return "".join(piece for value in response_values(a) for piece in _thinking_pieces(value))


def _thinking_pieces(value: Any) -> Iterator[str]:
    if not isinstance(value, dict):
        return
    delta = value.get("delta")
    kind = value.get("type")
    if isinstance(delta, dict) and delta.get("type") == "thinking_delta":
        yield _text(delta.get("thinking", ""))
    elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
        yield _text(value.get("delta", ""))
    for choice in value.get("choices") or []:
        if isinstance(choice, dict):
            for key in ("delta", "message"):
                part = choice.get(key)
                if isinstance(part, dict):
                    yield _text(part.get("reasoning_content") or part.get("reasoning") or "")
    for block in value.get("content") or []:  # an Anthropic message
        if isinstance(block, dict) and block.get("type") == "thinking":
            yield _text(block.get("thinking", ""))
    for item in value.get("output") or []:  # a responses API object
        if isinstance(item, dict) and item.get("type") == "reasoning":
            yield _block(item).text
    message = value.get("message")
    if isinstance(message, dict) and isinstance(message.get("thinking"), str):  # Ollama chat
        yield message["thinking"]
    if isinstance(value.get("thinking"), str) and "model" in value:  # Ollama generate
        yield value["thinking"]
