"""The inspector's HTTP API over the fixtures and over a capture being written: real server on
127.0.0.1 (port 0), real HTTP client."""

from __future__ import annotations

import json

import pytest
import trio
from captures import Spec

from wirecap.capture import ExchangeEnd, open_capture
from wirecap.capture.sink import SegmentHeader, SegmentSink


async def rows(client, url, **params):
    response = await client.get(url + "api/exchanges", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def by_path(page, path):
    return [r for r in page["rows"] if r["path"] == path]


async def test_the_list_pages_sorts_and_filters(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    everything = await rows(client, url)
    assert everything["total"] == everything["matched"] == 10
    starts = [r["start_ms"] for r in everything["rows"]]
    assert starts == sorted(starts, reverse=True)  # newest first
    second_page = await rows(client, url, limit=4, offset=4)
    assert [r["id"] for r in second_page["rows"]] == [r["id"] for r in everything["rows"][4:8]]
    durations = [
        r["duration_ms"] for r in (await rows(client, url, sort="duration", dir="asc"))["rows"]
    ]
    assert durations == sorted(durations)
    assert [r["status"] for r in (await rows(client, url, status="4xx"))["rows"]] == [429]
    assert {r["route"] for r in (await rows(client, url, route="/anthropic"))["rows"]} == {
        "/anthropic"
    }
    assert (await rows(client, url, model="claude*"))["matched"] == 2
    assert (await rows(client, url, model="llama"))["matched"] == 1
    [cut] = (await rows(client, url, finding="truncated-stream"))["rows"]
    assert cut["outcome"] == "upstream_error"
    assert (await rows(client, url, finding="error"))["rows"] == [cut]
    assert (await rows(client, url, since="2000-01-01", until="2100-01-01"))["matched"] == 10
    assert (await rows(client, url, since="2100-01-01"))["matched"] == 0


async def test_text_search_looks_through_prompts_and_answers(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    [story] = (await rows(client, url, q="TELL me a STORY"))["rows"]  # every word, any case
    assert story["outcome"] == "upstream_error"
    weather = await rows(client, url, q="paris")  # a prompt, and a tool call's arguments
    assert {r["path"] for r in weather["rows"]} == {
        "/openai/v1/chat/completions",
        "/openai/v1/responses",
        "/anthropic/v1/messages",
    }
    sky = await rows(client, url, q="sky blue")  # an answer, streamed in pieces
    assert {r["route"] for r in sky["rows"]} == {"/ollama"}
    assert (await rows(client, url, q="paris", route="/openai"))["matched"] == 2
    assert (await rows(client, url, q="no such words anywhere"))["matched"] == 0


async def test_bad_filters_are_told_not_failed(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    for params, said in [
        ({"status": "6xx"}, "bad status filter"),
        ({"since": "yesterday-ish"}, "bad time"),
        ({"sort": "colour"}, "unknown sort"),
        ({"limit": "0"}, "a page is"),
        ({"offset": "x"}, "must be a number"),
    ]:
        response = await client.get(url + "api/exchanges", params=params)
        assert response.status_code == 400
        assert said in response.json()["error"]


async def test_one_exchange_in_full(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    [row] = by_path(await rows(client, url), "/openai/v1/responses")
    response = await client.get(url + f"api/exchanges/{row['id'][:6]}")  # a unique prefix will do
    detail = response.json()
    assert detail["id"] == row["id"]
    assert [h["label"] for h in detail["heads"]] == [
        "request as received",
        "request as sent upstream",
        "response",
    ]
    assert detail["request"]["conversation"] == [
        {"role": "user", "parts": [{"kind": "text", "text": "Say hi and call a tool"}]}
    ]
    answer = detail["answer"]
    assert answer["text"] == "Hi there"
    assert answer["tool_calls"][0]["parsed"] == {"q": "paris"}
    assert answer["usage"]["input"] == 20
    timeline = detail["timeline"]
    assert timeline["ttft_ns"] / 1e6 == pytest.approx(detail["ttft_ms"], abs=0.001)
    assert [c[0] for c in timeline["chunks"]].count(1) == 8  # response reads
    assert "Authorization: Bearer [redacted sha256:" in detail["raw"]["request"]["text"]
    assert "\\r\\n" in detail["raw"]["request"]["text"]
    assert detail["raw"]["response"]["hex"].startswith("00000000  48 54 54 50")
    assert '"Authorization: Bearer $API_KEY"' in detail["commands"]["curl"]
    assert "[redacted" not in detail["commands"]["curl"]
    assert detail["commands"]["replay"].startswith(
        f"wirecap replay {row['id']}.cbor.zst --target http://127.0.0.1:"
    )


async def test_findings_come_with_their_messages(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    [cut] = (await rows(client, url, finding="truncated-stream"))["rows"]
    detail = (await client.get(url + f"api/exchanges/{cut['id']}")).json()
    codes = {f["code"]: f for f in detail["findings"]}
    assert codes["truncated-stream"]["message"].startswith("stream ended without data: [DONE]")
    assert codes["upstream-failure"]["severity"] == "error"


async def test_downloads_are_the_exact_bytes(start_ui, fixture_copy, client, tmp_path):
    url = await start_ui(fixture_copy)
    with open_capture(fixture_copy) as capture:
        exchanges = list(capture.exchanges())
    for exchange in exchanges:
        base = url + f"api/exchanges/{exchange.id}"
        response = await client.get(base + "/raw/response")
        assert response.status_code == 200
        assert response.content == exchange.response_bytes()
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"].startswith("attachment;")
        assert (await client.get(base + "/raw/request")).content == exchange.request_bytes()
        upstream = await client.get(base + "/raw/upstream")
        assert upstream.content == exchange.upstream_request_bytes()
    one = exchanges[0]
    har = (await client.get(url + f"api/exchanges/{one.id}/har")).json()
    assert [e["_id"] for e in har["log"]["entries"]] == [one.id]
    capture_file = tmp_path / "one.cbor.zst"
    capture_file.write_bytes((await client.get(url + f"api/exchanges/{one.id}/capture")).content)
    with open_capture(capture_file) as capture:
        [again] = list(capture.exchanges())
        assert capture.get(one.id) is not None  # through its index
    assert again.response_bytes() == one.response_bytes()
    assert again.request_bytes() == one.request_bytes()


async def test_metrics_count_tokens_ttft_and_findings_by_model_and_code(
    start_ui, fixture_copy, client
):
    url = await start_ui(fixture_copy)
    response = await client.get(url + "metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'wirecap_llm_tokens_total{kind="input",model="gpt-4.1-2025-04-14"} 20.0' in text
    assert 'wirecap_llm_ttft_seconds_count{model="claude-wirecap-test"} 2.0' in text
    assert 'wirecap_findings_total{code="rate-limited",severity="warning"} 1.0' in text
    assert "wirecap_ui_exchanges_indexed 10.0" in text


async def test_every_answer_keeps_captured_bytes_from_running(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    for path in ("", "api/summary", "api/exchanges", "static/app.js", "nowhere"):
        headers = (await client.get(url + path)).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


async def test_only_loopback_host_names_are_answered(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    assert (
        await client.get(url + "api/summary", headers={"Host": "localhost:1"})
    ).status_code == 200
    rebound = await client.get(url + "api/summary", headers={"Host": "attacker.example:5610"})
    assert rebound.status_code == 403


async def test_with_a_token_every_request_must_carry_it(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy, token="s3cret-token")
    for path in ("", "api/summary", "api/exchanges", "metrics", "static/app.js"):
        assert (await client.get(url + path)).status_code == 401
        wrong = await client.get(url + path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await client.get(url + path, headers={"Authorization": "Bearer s3cret-token"})
        assert right.status_code == 200
    opened = await client.get(url + "?token=s3cret-token&x=1")
    assert opened.status_code == 303
    assert opened.headers["location"] == "/?x=1"
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar_value = cookie.split(";", 1)[0]
    follow = await client.get(url + "api/summary", headers={"Cookie": jar_value})
    assert follow.status_code == 200


async def test_the_page_waits_for_changes(start_ui, fixture_copy, client):
    url = await start_ui(fixture_copy)
    version = (await client.get(url + "api/summary")).json()["version"]
    quiet = (await client.get(url + "api/changes", params={"after": version, "wait": 0.1})).json()
    assert quiet["version"] == version and quiet["changed"] == []
    everything = (await client.get(url + "api/changes", params={"after": 0, "wait": 0})).json()
    assert len(everything["changed"]) == 10


@pytest.fixture
def sink(tmp_path):
    directory = tmp_path / "live"
    directory.mkdir()
    writer = SegmentSink(directory, SegmentHeader({"enabled": False}))
    writer.open()
    yield writer
    writer.close()


async def wait_row(client, url, exchange_id, condition):
    """The list row of ``exchange_id`` once ``condition(row)`` holds (polling through
    /api/changes, as the page does)."""
    version = 0
    with trio.fail_after(30):
        while True:
            page = await rows(client, url)
            found = [r for r in page["rows"] if r["id"] == exchange_id]
            if found and condition(found[0]):
                return found[0]
            change = await client.get(url + "api/changes", params={"after": version, "wait": 5})
            version = change.json()["version"]


async def test_exchanges_appear_and_grow_while_they_are_written(start_ui, sink, client):
    url = await start_ui(sink.directory)
    assert (await rows(client, url))["total"] == 0
    chunks = [b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n', b"data: [DONE]\n\n"]
    records = Spec("abcdefabcdef", chunks=chunks, content_type="text/event-stream").records(0)
    assert isinstance(records[-1], ExchangeEnd)
    sink.write_records(records[:5])  # the request, its head upstream, and the first chunk
    live = await wait_row(client, url, "abcdefabcdef", lambda r: r["live"])
    assert live["outcome"] == "incomplete" and live["chunks"] == 1
    detail = (await client.get(url + "api/exchanges/abcdefabcdef")).json()
    assert detail["live"] and detail["answer"]["text"] == "Hel"
    sink.write_records(records[5:6])
    await wait_row(client, url, "abcdefabcdef", lambda r: r["chunks"] == 2)
    sink.write_records(records[6:])
    done = await wait_row(client, url, "abcdefabcdef", lambda r: not r["live"])
    assert done["outcome"] == "ok"
    metrics = (await client.get(url + "metrics")).text
    assert 'wirecap_llm_exchanges_total{model="gpt-4o-mini",outcome="ok",route="/"} 1.0' in metrics


async def test_a_captured_page_is_data_not_markup(start_ui, tmp_path, client):
    """A body holding HTML is sent to the page as a JSON string and downloaded as an
    attachment, never served as text/html."""
    directory = tmp_path / "hostile"
    directory.mkdir()
    writer = SegmentSink(directory, SegmentHeader({"enabled": False}))
    writer.open()
    html = b"<html><script>window.pwned=1</script></html>"
    writer.write_records(Spec("0123456789ab", chunks=[html], content_type="text/html").records(0))
    writer.close()
    url = await start_ui(directory)
    detail = (await client.get(url + "api/exchanges/0123456789ab")).json()
    assert detail["response"]["text"] == html.decode()
    raw = await client.get(url + "api/exchanges/0123456789ab/raw/response-body")
    assert raw.content == html
    assert raw.headers["content-type"] == "application/octet-stream"
    assert json.loads((await client.get(url + "api/exchanges/0123456789ab")).content)["id"]
