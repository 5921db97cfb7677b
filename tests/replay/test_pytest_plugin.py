"""The pytest plugin, run in a real inner pytest session (pytester, subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"

SERVE_TESTS = """
import httpx
import openai
import pytest


@pytest.mark.wirecap("openai_chat_json.cbor.zst")
def test_sync_sdk(wirecap_server):
    client = openai.OpenAI(base_url=wirecap_server.url + "/openai/v1", api_key="sk-anything", max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
    assert answer.choices[0].message.content == "Hello there!"


@pytest.mark.wirecap("openai_chat_json.cbor.zst", upstream="https://api.openai.com/")
def test_readme_example(wirecap_server):
    client = openai.OpenAI(base_url=wirecap_server.url + "/v1", api_key="sk-not-needed-offline")
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
    assert answer.choices[0].message.content == "Hello there!"


@pytest.mark.trio
@pytest.mark.wirecap("openai_chat_stream.cbor.zst", timing="none")
async def test_trio_stream(wirecap_server):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello slowly"}], "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient() as client:
        r = await client.post(wirecap_server.url + "/openai/v1/chat/completions", json=body)
    assert r.text.endswith("data: [DONE]\\n\\n")


@pytest.mark.wirecap("openai_chat_json.cbor.zst")
def test_unrecorded_request_fails(wirecap_server):
    httpx.post(wirecap_server.url + "/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Something new"}]})
"""


def test_none_mode_serves_captures_and_fails_on_a_miss(pytester):
    pytester.makepyfile(test_inner=SERVE_TESTS)
    result = pytester.runpytest_subprocess(f"--wirecap-dir={FIXTURES}", "-p", "trio")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*no recorded request matches POST /openai/v1/chat/completions*",
            "*closest*'Say hello' -> 'Something new'*",
        ]
    )


SDK_MISS_TEST = """
import openai
import pytest


@pytest.mark.wirecap("openai_chat_json.cbor.zst")
def test_sdk_gets_the_miss(wirecap_server):
    client = openai.OpenAI(base_url=wirecap_server.url + "/openai/v1", api_key="sk-x", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Something new"}])
"""


def test_a_miss_that_fails_the_test_is_reported_once_with_the_failure(pytester):
    pytester.makepyfile(test_inner=SDK_MISS_TEST)
    result = pytester.runpytest_subprocess(f"--wirecap-dir={FIXTURES}")
    result.assert_outcomes(failed=1, errors=0)
    output = result.stdout.str()
    assert "NotFoundError" in output
    # The closest recorded request is named once, in the failure's own report.
    assert output.count("'Say hello' -> 'Something new'") == 1, output
    result.stdout.fnmatch_lines(["*wirecap: requests not in the capture*"])


RECORD_TEST = """
import os
import httpx
import pytest


@pytest.mark.wirecap("recorded/chat.cbor.zst", upstream=os.environ["WIRECAP_TEST_UPSTREAM"])
def test_chat(wirecap_server):
    r = httpx.post(wirecap_server.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.json()["choices"][0]["message"]["content"] == "recorded answer"
"""


async def test_once_records_then_none_replays_without_the_upstream(
    pytester, start_upstream, monkeypatch
):
    answer = {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "recorded answer"},
                "finish_reason": "stop",
            }
        ],
    }

    async def handler(ex):
        await ex.respond(200, json.dumps(answer).encode(), [("Content-Type", "application/json")])

    upstream = await start_upstream(handler)
    monkeypatch.setenv("WIRECAP_TEST_UPSTREAM", upstream.url)
    pytester.makepyfile(test_rec=RECORD_TEST)
    captures = pytester.path / "captures"

    first = await trio.to_thread.run_sync(
        lambda: pytester.runpytest_subprocess(f"--wirecap-dir={captures}", "--wirecap-record=once")
    )
    first.assert_outcomes(passed=1)
    assert (captures / "recorded" / "chat.cbor.zst").is_file()
    assert len(upstream.requests) == 1

    again = await trio.to_thread.run_sync(
        lambda: pytester.runpytest_subprocess(f"--wirecap-dir={captures}")
    )
    again.assert_outcomes(passed=1)
    assert len(upstream.requests) == 1  # served from the capture: the upstream was not asked again

    missing = await trio.to_thread.run_sync(
        lambda: pytester.runpytest_subprocess(f"--wirecap-dir={pytester.path / 'empty'}")
    )
    missing.assert_outcomes(errors=1)
    missing.stdout.fnmatch_lines(["*no capture at*--wirecap-record=once*"])


NEW_TEST = """
import os
import httpx
import pytest


@pytest.mark.wirecap("chat.cbor.zst", upstream=os.environ["WIRECAP_TEST_UPSTREAM"], timing="none")
def test_chat(wirecap_server):
    for question in ("Say hello", "A new question"):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
        r = httpx.post(wirecap_server.url + "/openai/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
"""


async def test_new_mode_records_only_what_is_missing(pytester, start_upstream, monkeypatch):
    import shutil

    from wirecap.capture import open_capture

    async def handler(ex):
        await ex.respond(
            200,
            b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "fresh"}}]}',
            [("Content-Type", "application/json")],
        )

    upstream = await start_upstream(handler)
    monkeypatch.setenv("WIRECAP_TEST_UPSTREAM", f"{upstream.url}openai/")
    captures = pytester.path / "caps"
    captures.mkdir()
    shutil.copy(FIXTURES / "openai_chat_json.cbor.zst", captures / "chat.cbor.zst")
    pytester.makepyfile(test_new=NEW_TEST)

    result = await trio.to_thread.run_sync(
        lambda: pytester.runpytest_subprocess(f"--wirecap-dir={captures}", "--wirecap-record=new")
    )
    result.assert_outcomes(passed=1)
    assert [r.body for r in upstream.requests] == [
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"A new question"}]}'
    ]
    with open_capture(captures / "chat.cbor.zst") as capture:
        assert len(list(capture.exchanges())) == 2 and capture.files[0].indexed

    replayed = await trio.to_thread.run_sync(
        lambda: pytester.runpytest_subprocess(f"--wirecap-dir={captures}")
    )
    replayed.assert_outcomes(passed=1)
    assert len(upstream.requests) == 1


def test_a_fixture_wirecap_ships_is_found_by_name_without_a_capture_directory(pytester):
    from readme import snippets

    example = next(s for s in snippets() if s.kind == "pytest")  # the plugin section's first
    pytester.makepyfile(test_readme=example.code)
    result = pytester.runpytest_subprocess()  # no fixtures/ under this rootdir
    result.assert_outcomes(passed=1)
