"""A scripted LLM upstream and the real SDK calls that talk to it, shared by tests."""

from __future__ import annotations

import json

import anthropic
import openai
import samples
import trio

CHAT_JSON = samples.CHAT_JSON


def chat_stream_events() -> list[bytes]:
    """An OpenAI chat stream without a usage chunk, saying "Hello world"."""
    return samples.chat_stream(text=("Hel", "lo", " world"), usage=False)


MESSAGE_JSON = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-wirecap-test",
    "content": [{"type": "text", "text": "Bonjour"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 2},
}


def message_stream_events() -> list[bytes]:
    """An Anthropic message stream saying "Bonjour"."""
    return samples.message_stream(
        text=("Bon", "jour"),
        json_parts=None,
        stop_reason="end_turn",
        message=MESSAGE_JSON,
        output_tokens=2,
    )


async def llm_upstream(ex):
    body = json.loads(await ex.read_body())
    if ex.request.target == "/v1/chat/completions":
        if body.get("stream"):
            await ex.send_head(200, [("Content-Type", "text/event-stream")])
            for event in chat_stream_events():
                await ex.send_data(event)
                await trio.sleep(0.005)
            return await ex.end()
        return await ex.respond(
            200, json.dumps(CHAT_JSON).encode(), [("Content-Type", "application/json")]
        )
    if ex.request.target == "/v1/messages":
        if body.get("stream"):
            await ex.send_head(200, [("Content-Type", "text/event-stream")])
            for event in message_stream_events():
                await ex.send_data(event)
            return await ex.end()
        return await ex.respond(
            200,
            json.dumps(MESSAGE_JSON).encode(),
            [("Content-Type", "application/json"), ("request-id", "req_1")],
        )
    await ex.respond(404, b'{"error": "nope"}')


def openai_calls(base_url: str) -> tuple[bytes, str, str]:
    client = openai.OpenAI(base_url=base_url, api_key="sk-test-0123456789abcdefghij", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    client.close()
    return raw.http_response.content, completion.choices[0].message.content or "", text


def anthropic_calls(base_url: str) -> tuple[bytes, str, str]:
    client = anthropic.Anthropic(
        base_url=base_url, api_key="sk-ant-test-0123456789abcdefghij", max_retries=0
    )
    raw = client.messages.with_raw_response.create(
        model="claude-wirecap-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    message = raw.parse()
    with client.messages.stream(
        model="claude-wirecap-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
    client.close()
    return raw.http_response.content, message.content[0].text, text
