"""What carries ``bad-tool-args`` or ``length`` when an answer has nothing to rewrite. Sans-IO.

A rewrite (:mod:`wirecap.faults.rewrite`) changes what an answer has: a tool call's arguments, a
finish reason. An answer without a tool call (a plain text answer, the common case) or without a
finish reason gets the fault **added** in its own shape, made of :mod:`wirecap.faults.answers`'
pieces (the tool is the first the request offers, else ``wirecap_tool``):

- A JSON body: the tool call joins the answer (OpenAI chat ``message.tool_calls`` with finish
  reason ``tool_calls``; a responses ``function_call`` output item; an Anthropic ``tool_use``
  block with stop reason ``tool_use``; Ollama ``message.tool_calls``); ``length`` sets the finish
  reason (``length``; an incomplete response, ``max_output_tokens``; ``max_tokens``;
  ``done_reason: length``).
- A stream: the events that carry it go in before the place where the stream finishes its
  message, and that event is changed to match. OpenAI chat: the chunk with a finish reason (which
  becomes ``tool_calls``), else ``data: [DONE]``; Anthropic: ``message_delta`` (stop reason
  ``tool_use``; for ``length`` it gets ``max_tokens`` itself), else ``message_stop``; responses:
  ``response.completed`` (or ``incomplete``, ``failed``; the item joins its response's output);
  Ollama: the ``done: true`` line. A stream that ends before that place gets them at its end.

Only an answer in the API's shape gets anything: a JSON body of its kind, a stream with at least
one event of it. Anything else (an error body, HTML, another stream) cannot carry the fault.
"""

from __future__ import annotations

from typing import Any, Final

from wirecap.faults.answers import (
    SSEEvent,
    anthropic_stop_event,
    anthropic_tool_block,
    anthropic_tool_events,
    chat_chunk,
    chat_tool_call,
    incomplete,
    ollama_tool_call,
    responses_item_events,
    responses_tool_item,
)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _next_index(current: int, value: Any) -> int:
    """``current``, or one past ``value`` when that is a larger index."""
    return max(current, value + 1) if isinstance(value, int) else current


class Additions:
    """One answer's additions for ``kind`` (``bad-tool-args`` or ``length``) with ``tool``.

    :meth:`body` adds to a whole JSON body; a stream's events go through :meth:`before` one at a
    time, in order, and :meth:`end` is asked at the stream's end if :meth:`before` never found
    its place. Each subclass knows one API's shapes."""

    def __init__(self, kind: str, tool: str) -> None:
        self.kind = kind
        self.tool = tool
        self.shaped = False  # a stream event in the API's shape has been seen

    @property
    def tool_args(self) -> bool:
        return self.kind == "bad-tool-args"

    def body(self, obj: Any) -> bool:
        """Add the fault to ``obj`` (a decoded JSON body) in place; whether it could."""
        raise NotImplementedError

    def before(self, value: Any) -> list[SSEEvent] | None:
        """For a stream event's data (decoded JSON, or its text when it is not JSON): None, or,
        when it is the place, the events to insert before it (it may have been changed in place
        to match; ``[]``: only changed)."""
        raise NotImplementedError

    def end(self) -> list[SSEEvent]:
        """The events to add at the end of a stream whose place never came (none when no event
        was in the API's shape)."""
        raise NotImplementedError


class _Chat(Additions):
    """OpenAI chat completions (and the servers that copy them)."""

    def __init__(self, kind: str, tool: str) -> None:
        super().__init__(kind, tool)
        self.base: dict[str, Any] = {"id": "chatcmpl-wirecap", "created": 0, "model": "wirecap"}
        self.next_call = 0  # the index a streamed tool call of ours takes

    def body(self, obj: Any) -> bool:
        choices = [
            c for c in _dicts(_dict(obj).get("choices")) if isinstance(c.get("message"), dict)
        ]
        if not choices:
            return False
        if not self.tool_args:
            for choice in choices:
                choice["finish_reason"] = "length"
            return True
        message = choices[0]["message"]
        message["tool_calls"] = [*_dicts(message.get("tool_calls")), chat_tool_call(self.tool)]
        choices[0]["finish_reason"] = "tool_calls"
        return True

    def before(self, value: Any) -> list[SSEEvent] | None:
        if value == "[DONE]":
            return self.end()
        if not isinstance(_dict(value).get("choices"), list):
            return None
        choices = _dicts(value["choices"])
        # A chat chunk's choices carry deltas (a legacy completion's carry text: no tool call).
        if not any(isinstance(c.get("delta"), dict) for c in choices):
            return None
        self.shaped = True
        self.base.update({k: value[k] for k in ("id", "created", "model") if k in value})
        for choice in choices:
            for call in _dicts(_dict(choice.get("delta")).get("tool_calls")):
                self.next_call = _next_index(self.next_call, call.get("index"))
        finished = [c for c in choices if c.get("finish_reason")]
        if not self.tool_args or not finished:
            return None
        finished[0]["finish_reason"] = "tool_calls"
        delta = {"tool_calls": [chat_tool_call(self.tool, self.next_call)]}
        return [(None, chat_chunk(self.base, delta, index=finished[0].get("index", 0)))]

    def end(self) -> list[SSEEvent]:
        if not self.shaped:
            return []
        if not self.tool_args:
            return [(None, chat_chunk(self.base, {}, "length"))]
        delta = {"tool_calls": [chat_tool_call(self.tool, self.next_call)]}
        return [
            (None, chat_chunk(self.base, delta)),
            (None, chat_chunk(self.base, {}, "tool_calls")),
        ]


class _Anthropic(Additions):
    """Anthropic messages."""

    def __init__(self, kind: str, tool: str) -> None:
        super().__init__(kind, tool)
        self.next_block = 0  # the index a streamed content block of ours takes

    def body(self, obj: Any) -> bool:
        if _dict(obj).get("type") != "message":
            return False
        if self.tool_args:
            content = obj.get("content")
            obj["content"] = [
                *(content if isinstance(content, list) else []),
                anthropic_tool_block(self.tool),
            ]
        obj["stop_reason"] = "tool_use" if self.tool_args else "max_tokens"
        return True

    def before(self, value: Any) -> list[SSEEvent] | None:
        kind = _dict(value).get("type")
        if not isinstance(kind, str) or not kind.startswith(("message", "content_block")):
            return None
        self.shaped = True
        if kind == "content_block_start":
            self.next_block = _next_index(self.next_block, value.get("index"))
        elif kind == "message_delta" and isinstance(value.get("delta"), dict):
            value["delta"]["stop_reason"] = "tool_use" if self.tool_args else "max_tokens"
            return anthropic_tool_events(self.tool, self.next_block) if self.tool_args else []
        elif kind == "message_stop":
            return self.end()
        return None

    def end(self) -> list[SSEEvent]:
        if not self.shaped:
            return []
        if not self.tool_args:
            return [anthropic_stop_event("max_tokens")]
        return [
            *anthropic_tool_events(self.tool, self.next_block),
            anthropic_stop_event("tool_use"),
        ]


#: The events that end a responses API stream.
_RESPONSE_ENDS: Final = ("response.completed", "response.incomplete", "response.failed")


class _Responses(Additions):
    """The OpenAI responses API."""

    def __init__(self, kind: str, tool: str) -> None:
        super().__init__(kind, tool)
        self.next_output = 0  # the output index an item of ours takes
        self.sequence: int | None = None  # the last sequence number given
        self.response: dict[str, Any] = {}  # as the stream's first event gave it

    def body(self, obj: Any) -> bool:
        if _dict(obj).get("object") != "response" and not isinstance(
            _dict(obj).get("output"), list
        ):
            return False
        if not self.tool_args:
            incomplete(obj)
            return True
        output = obj.get("output")
        obj["output"] = [
            *(output if isinstance(output, list) else []),
            responses_tool_item(self.tool),
        ]
        return True

    def before(self, value: Any) -> list[SSEEvent] | None:
        kind = _dict(value).get("type")
        if not isinstance(kind, str) or not kind.startswith("response."):
            return None
        self.shaped = True
        number = value.get("sequence_number")
        if kind == "response.created":
            self.response = dict(_dict(value.get("response")))
        elif kind == "response.output_item.added":
            self.next_output = _next_index(self.next_output, value.get("output_index"))
        if kind not in _RESPONSE_ENDS:
            self.sequence = number if isinstance(number, int) else self.sequence
            return None
        response = _dict(value.get("response"))
        if not self.tool_args:
            value["type"] = "response.incomplete"
            incomplete(response)
            return []
        if isinstance(response.get("output"), list):
            response["output"].append(responses_tool_item(self.tool))
        if not isinstance(number, int):
            return self.end()
        self.sequence = number - 1  # ours take this event's number and it the next
        events = self.end()
        value["sequence_number"] = self.sequence + 1
        return events

    def end(self) -> list[SSEEvent]:
        if not self.shaped:
            return []
        if self.tool_args:
            events = responses_item_events(responses_tool_item(self.tool), self.next_output)
        else:
            response = incomplete({**self.response})
            events = [
                ("response.incomplete", {"type": "response.incomplete", "response": response})
            ]
        if self.sequence is not None:
            for _name, data in events:
                self.sequence += 1
                data["sequence_number"] = self.sequence
        return events


class _Ollama(Additions):
    """Ollama chat and generate (NDJSON streams; the events have no names)."""

    def __init__(self, kind: str, tool: str) -> None:
        super().__init__(kind, tool)
        self.base: dict[str, Any] = {"model": "wirecap", "created_at": "1970-01-01T00:00:00Z"}

    @staticmethod
    def _is_ollama(obj: Any) -> bool:
        return "error" not in _dict(obj) and any(
            k in _dict(obj) for k in ("message", "response", "done")
        )

    def body(self, obj: Any) -> bool:
        if not self._is_ollama(obj):
            return False
        if not self.tool_args:
            obj.update(done=True, done_reason="length")
            return True
        message = _dict(obj.get("message")) or {"role": "assistant", "content": ""}
        message["tool_calls"] = [*_dicts(message.get("tool_calls")), ollama_tool_call(self.tool)]
        obj["message"] = message
        return True

    def before(self, value: Any) -> list[SSEEvent] | None:
        if not self._is_ollama(value):
            return None
        self.shaped = True
        self.base.update({k: value[k] for k in ("model", "created_at") if k in value})
        # ``length`` has no place: a ``done: true`` line is rewritten (its ``done_reason``).
        return self.end() if self.tool_args and value.get("done") is True else None

    def end(self) -> list[SSEEvent]:
        if not self.shaped:
            return []
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if not self.tool_args:
            return [
                (None, {**self.base, "message": message, "done": True, "done_reason": "length"})
            ]
        message["tool_calls"] = [ollama_tool_call(self.tool)]
        return [(None, {**self.base, "message": message, "done": False})]


#: Each API's additions; any other path gets OpenAI chat's, as the rewriters do.
_ADDITIONS: Final[dict[str, type[Additions]]] = {
    "openai.chat": _Chat,
    "openai.responses": _Responses,
    "anthropic.messages": _Anthropic,
    "ollama.chat": _Ollama,
    "ollama.generate": _Ollama,
}


def additions_for(kind: str, api: str, tool: str) -> Additions:
    """The additions of ``kind`` for an answer of ``api`` (see :func:`answers.api_of`)."""
    return _ADDITIONS.get(api, _Chat)(kind, tool)
