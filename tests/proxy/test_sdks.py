"""The real openai and anthropic SDKs get the same answers through the proxy as without it."""

from __future__ import annotations

import trio
from fake_llm import (
    anthropic_calls,
    chat_stream_events,
    llm_upstream,
    message_stream_events,
    openai_calls,
)


async def test_openai_sdk_same_answers_direct_and_through_proxy(start_upstream, start_proxy):
    upstream = await start_upstream(llm_upstream)
    proxy = await start_proxy(routes=[f"/openai/={upstream.url}"])
    direct = await trio.to_thread.run_sync(openai_calls, f"{upstream.url}v1")
    proxied = await trio.to_thread.run_sync(openai_calls, f"{proxy.url}/openai/v1")
    assert proxied == direct
    assert direct[1:] == ("Hello there!", "Hello world")
    with await proxy.capture() as capture:
        exchanges = list(capture.exchanges())
    assert [e.status for e in exchanges] == [200, 200]
    assert exchanges[1].response_body == b"".join(chat_stream_events())
    assert b"sk-test-0123456789abcdefghij" not in exchanges[0].request.head  # redacted


async def test_anthropic_sdk_same_answers_direct_and_through_proxy(start_upstream, start_proxy):
    upstream = await start_upstream(llm_upstream)
    proxy = await start_proxy(routes=[f"/anthropic/={upstream.url}"])
    direct = await trio.to_thread.run_sync(anthropic_calls, upstream.url.rstrip("/"))
    proxied = await trio.to_thread.run_sync(anthropic_calls, f"{proxy.url}/anthropic")
    assert proxied == direct
    assert direct[1:] == ("Bonjour", "Bonjour")
    with await proxy.capture() as capture:
        exchanges = list(capture.exchanges())
    assert exchanges[1].response_body == b"".join(message_stream_events())
    assert exchanges[0].request is not None
    assert {r.name for r in exchanges[0].request.redactions} & {"x-api-key", "authorization"}
    assert b"sk-ant-test-0123456789abcdefghij" not in exchanges[0].request.head
