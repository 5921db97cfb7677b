"""The pytest plugin's ``faults=[...]`` marker option, in a real inner pytest session."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"

MARKER_TESTS = """
import openai
import pytest


def chat(client):
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])


@pytest.mark.wirecap("openai_chat_json.cbor.zst", faults=["429,every=2"])
def test_every_second_call_is_rate_limited(wirecap_server):
    client = openai.OpenAI(base_url=wirecap_server.url + "/openai/v1", api_key="sk-x", max_retries=0)
    assert chat(client).choices[0].message.content == "Hello there!"
    with pytest.raises(openai.RateLimitError):
        chat(client)
    assert chat(client).choices[0].message.content == "Hello there!"


@pytest.mark.wirecap("openai_chat_json.cbor.zst", faults=["length"])
def test_the_answer_is_cut_by_the_token_limit(wirecap_server):
    client = openai.OpenAI(base_url=wirecap_server.url + "/openai/v1", api_key="sk-x", max_retries=0)
    assert chat(client).choices[0].finish_reason == "length"


@pytest.mark.wirecap("openai_chat_json.cbor.zst", faults=["teapot"])
def test_a_bad_spec(wirecap_server):
    pass
"""


def test_the_marker_serves_its_faults_and_a_bad_spec_fails_in_one_line(pytester):
    pytester.makepyfile(test_inner=MARKER_TESTS)
    result = pytester.runpytest_subprocess(f"--wirecap-dir={FIXTURES}")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*wirecap: faults=[[]...[]]: unknown fault kind 'teapot'*"])
    assert "Traceback" not in result.stdout.str()
