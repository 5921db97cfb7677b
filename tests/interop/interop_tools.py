"""For the interop tests: a loopback LLM upstream that answers JSON gzip-coded (as real
providers do) and streams SSE, and a cassette vcrpy records of the real openai SDK talking to it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import openai
from click.testing import CliRunner
from fake_llm import CHAT_JSON, chat_stream_events

from wirecap.cli import main

API_KEY = "sk-test-0123456789abcdefghij"


async def gzip_llm_upstream(ex):
    """OpenAI chat completions: a gzip-coded JSON answer, or an SSE stream (chunked)."""
    body = json.loads(await ex.read_body())
    if ex.request.target != "/v1/chat/completions":
        return await ex.respond(404, b'{"error": {"message": "nope"}}')
    if body.get("stream"):
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        for event in chat_stream_events():
            await ex.send_data(event)
        return await ex.end()
    await ex.respond(
        200,
        gzip.compress(json.dumps(CHAT_JSON).encode()),
        [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
    )


def sdk_calls(base_url: str) -> tuple[str, str]:
    """The openai SDK's JSON answer and its streamed text."""
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    try:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        client.close()
    return answer.choices[0].message.content or "", text


def record_cassette(path: Path, base_url: str, **vcr_options) -> tuple[str, str]:
    """Record the SDK's calls to ``base_url`` with vcrpy into the cassette ``path``."""
    import vcr

    recorder = vcr.VCR(record_mode="all", **vcr_options)
    with recorder.use_cassette(str(path)):
        return sdk_calls(base_url)


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])
