"""The real openai and anthropic SDKs against ``wirecap serve --fault 429``: they raise their own
typed errors for each provider-shaped answer, and retry a 429 waiting what its retry-after says.

What the SDKs do (read in their installed ``_base_client.py``): both retry 408, 409, 429 and 5xx
``max_retries`` times (default 2), and wait the ``retry-after`` (or ``retry-after-ms``) the answer
carries; openai only when it is at most 120 s and not at all when it is longer, anthropic any
positive value. Without it they back off from 0.5 s (at most 0.5 s before the first retry).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import anthropic
import openai
import pytest
import trio

from wirecap.capture import open_capture
from wirecap.faults import FaultPlan, parse_fault
from wirecap.replay.serve import MockServer, Served, load_catalog

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"


async def start_mock(
    nursery, names: list[str], faults: list[str]
) -> tuple[MockServer, list[float]]:
    """A mock serving ``names`` with ``faults``; the list gets the time each request arrived."""
    with open_capture(*(FIXTURES / f"{n}.cbor.zst" for n in names)) as capture:
        catalog = load_catalog(capture, match_on=("method", "path"))
    arrivals: list[float] = []

    def told(_served: Served) -> None:
        arrivals.append(time.monotonic())

    server = MockServer(
        catalog, speed=None, faults=FaultPlan(map(parse_fault, faults)), on_answer=told
    )
    await nursery.start(server.run)
    return server, arrivals


def openai_client(url: str, retries: int = 2) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/openai/v1", api_key="sk-test", max_retries=retries)


def chat(client: openai.OpenAI) -> str:
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    return answer.choices[0].message.content or ""


async def test_openai_retries_a_429_after_its_retry_after_then_raises(nursery):
    server, arrivals = await start_mock(nursery, ["openai_chat_json"], ["429,retry-after=1"])

    def call() -> None:
        with openai_client(server.url) as client, pytest.raises(openai.RateLimitError) as info:
            chat(client)
        assert info.value.code == "rate_limit_exceeded"
        assert "injected by wirecap" in info.value.message

    await trio.to_thread.run_sync(call)
    assert len(arrivals) == 3  # the call and its two retries
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 1.0  # retry-after, not the SDK's own backoff (at most 0.5 s, then 1 s)


async def test_openai_gets_through_every_second_request_failing(nursery):
    """The README's recipe: every 2nd request is a 429; with retries, every call succeeds."""

    server, arrivals = await start_mock(
        nursery, ["openai_chat_json"], ["429,retry-after=1,every=2"]
    )

    def calls() -> list[str]:
        with openai_client(server.url) as client:
            return [chat(client), chat(client)]

    assert await trio.to_thread.run_sync(calls) == ["Hello there!", "Hello there!"]
    assert len(arrivals) == 3  # the second call's 429, then its retry
    assert arrivals[2] - arrivals[1] >= 1.0


async def test_openai_does_not_retry_a_retry_after_over_two_minutes(nursery):
    server, arrivals = await start_mock(nursery, ["openai_chat_json"], ["429,retry-after=121"])

    def call() -> None:
        with openai_client(server.url) as client, pytest.raises(openai.RateLimitError):
            chat(client)

    await trio.to_thread.run_sync(call)
    assert len(arrivals) == 1


@pytest.mark.parametrize(
    ("spec", "error"),
    [("500", openai.InternalServerError), ("503", openai.InternalServerError)],
)
async def test_openai_raises_its_typed_error_for_each_status(nursery, spec, error):
    server, arrivals = await start_mock(nursery, ["openai_chat_json"], [spec])

    def call() -> None:
        with openai_client(server.url, retries=0) as client, pytest.raises(error) as info:
            chat(client)
        assert info.value.status_code == int(spec)
        assert info.value.type == "server_error"

    await trio.to_thread.run_sync(call)
    assert len(arrivals) == 1


def anthropic_call(url: str, retries: int = 2) -> None:
    with anthropic.Anthropic(
        base_url=f"{url}/anthropic", api_key="sk-ant-test", max_retries=retries
    ) as client:
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )


async def test_anthropic_retries_a_429_after_its_retry_after_then_raises(nursery):
    server, arrivals = await start_mock(nursery, ["anthropic_message_json"], ["429,retry-after=1"])

    def call() -> None:
        with pytest.raises(anthropic.RateLimitError) as info:
            anthropic_call(server.url)
        assert info.value.body["error"]["type"] == "rate_limit_error"

    await trio.to_thread.run_sync(call)
    assert len(arrivals) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 1.0


@pytest.mark.parametrize(("spec", "kind"), [("500", "api_error"), ("503", "overloaded_error")])
async def test_anthropic_raises_its_typed_error_for_each_status(nursery, spec, kind):
    server, _arrivals = await start_mock(nursery, ["anthropic_message_json"], [spec])

    def call() -> None:
        with pytest.raises(anthropic.InternalServerError) as info:
            anthropic_call(server.url, retries=0)
        assert info.value.status_code == int(spec)
        assert info.value.body["error"]["type"] == kind

    await trio.to_thread.run_sync(call)
