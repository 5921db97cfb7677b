"""The real openai and anthropic SDKs through ``wirecap proxy --fault bad-tool-args`` in front of
an upstream whose answer has no tool call: the proxy adds one in the answer's own shape, the SDKs
parse it, and its arguments are not JSON (what an agent's tool-call handling must survive).

client (SDK) -> proxy with the fault -> upstream (a ``MockServer`` serving a fixture, or a scripted
Anthropic stream of text only).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anthropic
import openai
import pytest
import trio

from wirecap.capture import open_capture
from wirecap.replay.serve import MockServer, load_catalog

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


async def start_mock(nursery, name: str) -> MockServer:
    with open_capture(FIXTURES / f"{name}.cbor.zst") as capture:
        catalog = load_catalog(capture, match_on=("method", "path"))
    server = MockServer(catalog, speed=None)
    await nursery.start(server.run)
    return server


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return True
    return False


async def fault_notes(proxy) -> list[dict]:
    with await proxy.capture() as capture:
        return [note for e in capture.exchanges() for note in e.notes_of("fault")]


async def test_openai_sdk_gets_a_broken_tool_call_added_to_a_plain_answer(nursery, start_proxy):
    mock = await start_mock(nursery, "openai_chat_json")
    proxy = await start_proxy(upstream=mock.url + "/", fault=["bad-tool-args"])

    def call() -> openai.types.chat.ChatCompletion:
        with openai.OpenAI(
            base_url=f"{proxy.url}/openai/v1", api_key="sk-test", max_retries=0
        ) as client:
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER]
            )

    answer = await trio.to_thread.run_sync(call)
    choice = answer.choices[0]
    assert choice.message.content == "Hello there!"  # what the upstream said stays
    assert choice.finish_reason == "tool_calls"
    [tool_call] = choice.message.tool_calls or []
    assert tool_call.function.name == "get_weather"
    assert not_json(tool_call.function.arguments)
    [note] = await fault_notes(proxy)
    assert note["applied"] is True and note["synthesized"] is True


async def test_openai_sdk_stream_gets_a_broken_tool_call_added(nursery, start_proxy):
    mock = await start_mock(nursery, "openai_chat_stream")
    proxy = await start_proxy(upstream=mock.url + "/", fault=["bad-tool-args"])

    def call() -> tuple[str, dict[int, tuple[str, str]], list[str]]:
        text, calls, finishes = "", {}, []
        with openai.OpenAI(
            base_url=f"{proxy.url}/openai/v1", api_key="sk-test", max_retries=0
        ) as client:
            for chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER], stream=True
            ):
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finishes += [choice.finish_reason] if choice.finish_reason else []
                    for piece in choice.delta.tool_calls or []:
                        name, arguments = calls.get(piece.index, ("", ""))
                        function = piece.function
                        calls[piece.index] = (
                            name + (function.name or "" if function else ""),
                            arguments + (function.arguments or "" if function else ""),
                        )
        return text, calls, finishes

    text, calls, finishes = await trio.to_thread.run_sync(call)
    assert text == "Hello there!"
    assert list(calls) == [0] and calls[0][0] == "get_weather"
    assert not_json(calls[0][1])
    assert finishes == ["tool_calls"]
    [note] = await fault_notes(proxy)
    assert note["applied"] is True and note["synthesized"] is True


async def test_openai_sdk_stream_helper_assembles_the_added_tool_call(nursery, start_proxy):
    """The SDK's own accumulator (``chat.completions.stream``) builds the final completion."""
    mock = await start_mock(nursery, "openai_chat_stream")
    proxy = await start_proxy(upstream=mock.url + "/", fault=["bad-tool-args"])

    def call() -> openai.types.chat.ParsedChatCompletion[None]:
        with (
            openai.OpenAI(
                base_url=f"{proxy.url}/openai/v1", api_key="sk-test", max_retries=0
            ) as client,
            client.chat.completions.stream(
                model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER]
            ) as stream,
        ):
            return stream.get_final_completion()

    final = await trio.to_thread.run_sync(call)
    [tool_call] = final.choices[0].message.tool_calls or []
    assert tool_call.function.name == "get_weather"
    assert not_json(tool_call.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"


def anthropic_text_stream() -> bytes:
    events = [
        ("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
                                       "model": "claude-test", "content": [], "stop_reason": None,
                                       "stop_sequence": None,
                                       "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Sunny."}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 3}}),
        ("message_stop", {}),
    ]  # fmt: skip
    return b"".join(
        f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()
        for name, data in events
    )


@pytest.fixture
async def anthropic_proxy(start_upstream, start_proxy):
    async def answer(exchange) -> None:
        await exchange.respond(
            200, anthropic_text_stream(), [("Content-Type", "text/event-stream")]
        )

    upstream = await start_upstream(answer)
    return await start_proxy(upstream=upstream.url, fault=["bad-tool-args"])


TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


def anthropic_client(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)


async def test_anthropic_sdk_stream_gets_a_broken_tool_call_added(anthropic_proxy):
    def call() -> tuple[str, list[str], str, str | None]:
        text, names, partial, stop = "", [], "", None
        with anthropic_client(anthropic_proxy) as client:
            for event in client.messages.create(
                model="claude-test", max_tokens=50, messages=MESSAGES, tools=[TOOL], stream=True
            ):
                if event.type == "content_block_start" and event.content_block.type == "tool_use":
                    names.append(event.content_block.name)
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
                elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    partial += event.delta.partial_json
                elif event.type == "message_delta":
                    stop = event.delta.stop_reason
        return text, names, partial, stop

    text, names, partial, stop = await trio.to_thread.run_sync(call)
    assert text == "Sunny."
    assert names == ["get_weather"] and stop == "tool_use"
    assert not_json(partial)
    [note] = await fault_notes(anthropic_proxy)
    assert note["applied"] is True and note["synthesized"] is True


async def test_anthropic_sdk_stream_helper_ends_with_the_added_tool_use(anthropic_proxy):
    """The SDK's accumulator (``messages.stream``) reads the broken input as partial JSON and
    still finishes the message with the tool use."""

    def call() -> anthropic.types.Message:
        with (
            anthropic_client(anthropic_proxy) as client,
            client.messages.stream(
                model="claude-test", max_tokens=50, messages=MESSAGES, tools=[TOOL]
            ) as stream,
        ):
            return stream.get_final_message()

    message = await trio.to_thread.run_sync(call)
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[1].name == "get_weather"  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("kind", ["bad-tool-args", "length"])
async def test_anthropic_sdk_reads_a_gzipped_stream_under_the_fault(
    start_upstream, start_proxy, kind
):
    """A compressed stream is decoded whole, then handled as the stream it is: the client gets
    the decoded events (the answer loses its Content-Encoding), none of the compressed bytes."""

    async def answer(exchange) -> None:
        await exchange.respond(
            200,
            gzip.compress(anthropic_text_stream()),
            [("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")],
        )

    upstream = await start_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url, fault=[kind])

    def call() -> anthropic.types.Message:
        with (
            anthropic_client(proxy) as client,
            client.messages.stream(
                model="claude-test", max_tokens=50, messages=MESSAGES, tools=[TOOL]
            ) as stream,
        ):
            return stream.get_final_message()

    message = await trio.to_thread.run_sync(call)
    assert message.content[0].type == "text" and message.content[0].text == "Sunny."
    if kind == "bad-tool-args":
        assert [block.type for block in message.content] == ["text", "tool_use"]
        assert message.stop_reason == "tool_use"
    else:
        assert message.stop_reason == "max_tokens"
    [note] = await fault_notes(proxy)
    assert note["applied"] is True


async def test_an_http_10_client_gets_the_added_tool_call_and_the_end_of_the_answer(
    start_upstream, start_proxy
):
    """An HTTP/1.0 client's answer under the fault is close-delimited: the proxy closes the
    connection after it, so the client sees the end."""

    async def answer(exchange) -> None:
        await exchange.respond(
            200, anthropic_text_stream(), [("Content-Type", "text/event-stream")]
        )

    upstream = await start_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url, fault=["bad-tool-args"])
    body = json.dumps({"model": "claude-test", "max_tokens": 5, "messages": MESSAGES}).encode()
    request = (
        b"POST /v1/messages HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    received = bytearray()
    with trio.fail_after(20):  # a hang guard: the answer ends when the proxy closes
        await stream.send_all(request)
        while data := await stream.receive_some():
            received += data
    await stream.aclose()
    head, _, payload = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    assert b'"type": "tool_use"' in payload and payload.endswith(b"\n\n")
    assert payload.count(b"event: message_stop") == 1
