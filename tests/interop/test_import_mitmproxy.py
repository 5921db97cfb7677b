"""mitmproxy flow files, as the real mitmdump wrote them (tests/data/mitmproxy, made by
scripts/make_mitmproxy_samples.py), read without mitmproxy; and the tnetstring reader."""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from interop_tools import run

from wirecap.capture import open_capture
from wirecap.interop import tnetstring
from wirecap.replay.serve import MockServer, load_catalog
from wirecap.ui.app import run_ui

SAMPLE = Path(__file__).parent.parent / "data" / "mitmproxy" / "llm.mitm"


@pytest.fixture
def imported(tmp_path):
    out = tmp_path / "out"
    result = run("import", SAMPLE, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        f"{SAMPLE}: 5 exchanges (mitmproxy), 2 skipped: "
        "1 no response: server closed connection; 1 tcp flow"
    )
    return out


def test_flows_become_exchanges_with_their_bytes_and_times(imported):
    with open_capture(imported) as capture:
        plain, coded, stream, missing, upload = capture.exchanges()
    assert plain.request.upstream_url.startswith("http://127.0.0.1:")
    assert json.loads(plain.response_body)["choices"][0]["message"]["content"] == "Hi there"
    assert b"Content-Encoding: gzip" in coded.response.head
    assert json.loads(gzip.decompress(coded.response_body))["id"] == "chatcmpl-mitm"
    # the stream was chunked on the wire: stored chunked, one read per event
    assert b"Transfer-Encoding: chunked" in stream.response.head
    assert stream.response_bytes().endswith(b"\r\n0\r\n\r\n")
    assert stream.response_body.endswith(b"data: [DONE]\n\n")
    assert len(stream.response_chunks) == 5
    assert (missing.status, upload.request_body) == (404, bytes(range(256)))
    assert upload.response_body == bytes(range(256))[::-1]
    # mitmproxy's timestamps give the exchange its times; chunk times are not in a flow
    assert 0 < stream.ttfb_ns < stream.duration_ns
    note = stream.notes_of("import")[0]
    assert (note["source"], note["file"], note["entry"]) == ("mitmproxy", str(SAMPLE), 2)
    assert "no chunk timing" in note["approximate"] and "no timing" not in note["approximate"]
    assert b"Bearer [redacted sha256:" in plain.request.head


def test_inspect_and_detect_issues_read_imported_flows(imported):
    rows = [json.loads(line) for line in run("inspect", imported, "--json").output.splitlines()]
    assert [r["status"] for r in rows] == [200, 200, 200, 404, 200]
    assert [r["output_tokens"] for r in rows[:2]] == [2, 2]
    assert rows[2]["streamed"] and rows[2]["finish_reason"] == "stop"
    detail = run("inspect", imported, "--id", rows[2]["id"])
    assert "Hello" in detail.output and "import from mitmproxy" in detail.output
    issues = run("inspect", imported, "--detect-issues", "--json")
    codes = {json.loads(line)["code"] for line in issues.output.splitlines()}
    assert "http-error" in codes and "truncated-stream" not in codes


async def test_serve_answers_the_openai_sdk_from_imported_flows(imported, nursery):
    import openai

    with open_capture(imported) as capture:
        catalog = load_catalog(capture, match_on=("method", "path"))
    server = MockServer(catalog, speed=None)
    await nursery.start(server.run)

    def ask() -> str:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-x", max_retries=0)
        try:
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        finally:
            client.close()
        return answer.choices[0].message.content or ""

    assert await trio.to_thread.run_sync(ask) == "Hi there"


def test_a_cut_or_foreign_flow_file_is_a_one_line_error(tmp_path):
    cut = tmp_path / "cut.mitm"
    cut.write_bytes(SAMPLE.read_bytes()[:5000])
    result = run("import", cut, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {cut}: not a mitmproxy flow file: the value at byte")
    assert result.output.rstrip().endswith("nothing was written")
    assert not (tmp_path / "out").exists()
    other = tmp_path / "list.mitm"
    other.write_bytes(b"5:hello,")
    result = run("import", other, "-o", tmp_path / "out", "--format", "mitmproxy")
    assert (
        result.output
        == f"Error: {other}: flow 0 is not a flow (a dict with a type); nothing was written\n"
    )


def test_a_flow_file_is_told_by_its_shape_whatever_its_first_flow_holds(tmp_path):
    flows = tmp_path / "big.flow"  # "version" comes after 100 KiB of body
    flows.write_bytes(dumps({"request": {"content": b"x" * 100_000}, "version": 21, "type": "tcp"}))
    result = run("import", flows, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output  # nothing imported
    assert (
        result.output.splitlines()[0] == f"{flows}: 0 exchanges (mitmproxy), 1 skipped: 1 tcp flow"
    )
    assert (
        result.output.splitlines()[1]
        == f"nothing imported: no capture written in {tmp_path / 'out'}"
    )
    assert not (tmp_path / "out").exists()


def dumps(value) -> bytes:
    """A tnetstring writer for the tests (mitmproxy's encoding: text ';', bytes ',')."""
    if value is None:
        payload, kind = b"", b"~"
    elif isinstance(value, bool):
        payload, kind = (b"true" if value else b"false"), b"!"
    elif isinstance(value, int):
        payload, kind = str(value).encode(), b"#"
    elif isinstance(value, float):
        payload, kind = repr(value).encode(), b"^"
    elif isinstance(value, bytes):
        payload, kind = value, b","
    elif isinstance(value, str):
        payload, kind = value.encode(), b";"
    elif isinstance(value, list):
        payload, kind = b"".join(dumps(v) for v in value), b"]"
    else:
        payload, kind = b"".join(dumps(k) + dumps(v) for k, v in value.items()), b"}"
    return b"%d:%s%s" % (len(payload), payload, kind)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.binary()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_tnetstring_reads_what_was_written(value):
    assert tnetstring.loads(dumps(value)) == value
    assert list(tnetstring.iter_file(io.BytesIO(dumps(value) * 2), 1 << 20)) == [value, value]


@given(st.binary(max_size=64))
def test_tnetstring_refuses_junk_with_its_own_error(data):
    with contextlib.suppress(tnetstring.TNetStringError):  # any other exception fails
        tnetstring.loads(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"5:abc,", "runs past the end"),
        (b"x:abc,", "no length at byte 0"),
        (b"3:abc?", "unknown type '?'"),
        (b"2:xy!", "neither true nor false"),
        (b"4:1:a,}", "a key without a value"),
        (b"3:0:]]x", "1 bytes after the value"),
    ],
)
def test_tnetstring_errors_say_what_is_wrong(data, message):
    with pytest.raises(tnetstring.TNetStringError, match=message):
        tnetstring.loads(data)


def test_tnetstring_nesting_is_bounded():
    value: list = []
    for _ in range(tnetstring.MAX_DEPTH + 2):
        value = [value]
    with pytest.raises(tnetstring.TNetStringError, match="nested deeper"):
        tnetstring.loads(dumps(value))


async def test_the_web_inspector_reads_imported_flows(imported, nursery):
    url = await nursery.start(
        functools.partial(run_ui, (imported,), host="127.0.0.1", port=0, token=None)
    )
    async with httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(30):  # a hang guard: the capture is read at once
            while not (await client.get("/api/summary")).json()["caught_up"]:
                await trio.sleep(0.02)
        page = (await client.get("/api/exchanges")).json()
        assert page["total"] == 5
        stream = next(
            r for r in page["rows"] if r["path"] == "/v1/chat/completions" and r["streamed"]
        )
        detail = (await client.get(f"/api/exchanges/{stream['id']}")).json()
    assert detail["answer"]["text"] == "Hello"
