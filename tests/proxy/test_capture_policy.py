"""What lands in the capture: redaction, X-Proxy-Path, per-route capture and sampling, write failures."""

from __future__ import annotations

import json
import os
import shutil
import signal

import httpx
import pytest
import trio
from helpers import frames_written, full_disk_writer

from wirecap.capture import proxy_path_of, strip_proxy_path

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
OTHER = "sk-ant-api03-ZYXWVUTSRQPONMLKJIHGFEDCBA987654"


async def echo_cookie(ex):
    body = await ex.read_body()
    await ex.send_head(
        200,
        [
            ("Content-Type", "application/json"),
            ("Set-Cookie", "session=abc123secret; HttpOnly"),
            ("Content-Length", str(len(body))),
        ],
    )
    await ex.send_data(body)
    await ex.end()


async def test_secrets_are_redacted_with_fingerprints_and_forwarded_untouched(
    start_upstream, start_proxy
):
    upstream = await start_upstream(echo_cookie)
    proxy = await start_proxy(upstream=upstream.url, redact_headers=["X-Team-Token"])
    body = json.dumps({"messages": [{"role": "user", "content": f"my key is {SECRET}"}]}).encode()
    async with httpx.AsyncClient() as client:
        for key in (SECRET, OTHER):
            r = await client.post(
                f"{proxy.url}/v1/chat",
                content=body,
                headers={
                    "Authorization": f"Bearer {key}",
                    "x-api-key": key,
                    "Cookie": "a=b",
                    "X-Team-Token": "team-secret-1",
                },
            )
            assert r.content == body  # the forwarded bytes are untouched
            assert r.headers["set-cookie"] == "session=abc123secret; HttpOnly"
    # the upstream saw the real credentials
    assert upstream.requests[0].header("authorization") == f"Bearer {SECRET}".encode()
    assert upstream.requests[0].body == body

    with await proxy.capture() as capture:
        exchanges = list(capture.exchanges())
        header = capture.files[0].header
        raw_file = b"".join(f.path.read_bytes() for f in capture.files)
    import io

    import zstandard

    plain = (
        zstandard.ZstdDecompressor()
        .stream_reader(io.BytesIO(raw_file), read_across_frames=True)
        .read()
    )
    for secret in (SECRET, OTHER, "team-secret-1", "abc123secret"):
        assert secret.encode() not in plain
    assert header is not None and header.redaction["enabled"] is True
    first, second = exchanges
    assert first.request is not None and second.request is not None
    fp = {r.name: r.fp for r in first.request.redactions}
    assert {"authorization", "x-api-key", "cookie", "x-team-token"} <= set(fp)
    assert f"Bearer [redacted sha256:{fp['authorization']}]".encode() in first.request.head
    fp2 = {r.name: r.fp for r in second.request.redactions}
    assert fp["authorization"] != fp2["authorization"]  # two keys can be told apart
    assert fp["cookie"] == fp2["cookie"]  # the same secret gives the same fingerprint
    assert b"[redacted sha256:" in first.request_body and SECRET.encode() not in first.request_body
    assert first.response is not None and b"Set-Cookie: [redacted sha256:" in first.response.head


async def test_no_redact_stores_everything_and_says_so(start_upstream, start_proxy):
    upstream = await start_upstream(echo_cookie)
    proxy = await start_proxy(upstream=upstream.url, redact=False)
    async with httpx.AsyncClient() as client:
        await client.post(
            f"{proxy.url}/v1/chat", content=b"{}", headers={"Authorization": f"Bearer {SECRET}"}
        )
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
        assert capture.files[0].header.redaction["enabled"] is False
    assert exchange.request is not None and f"Bearer {SECRET}".encode() in exchange.request.head


async def test_x_proxy_path_is_recorded_not_forwarded_unless_asked(
    start_upstream, start_proxy, tmp_path
):
    upstream = await start_upstream(echo_cookie)
    config = tmp_path / "wirecap.toml"
    config.write_text(
        f"""
[[route]]
prefix = "/openai/"
upstream = "{upstream.url}v1base/"

[[route]]
prefix = "/fwd/"
upstream = "{upstream.url}"
forward_proxy_path = true
"""
    )
    from wirecap.proxy.config import load_toml

    proxy = await start_proxy(doc=load_toml(config))
    async with httpx.AsyncClient() as client:
        await client.post(f"{proxy.url}/openai/chat/completions?api-version=2", content=b"{}")
        await client.post(f"{proxy.url}/fwd/v1/x", content=b"{}")
    first, second = upstream.requests
    assert first.target == "/v1base/chat/completions?api-version=2"
    assert first.header("x-proxy-path") is None  # not sent upstream by default
    assert second.header("x-proxy-path") == f"http://127.0.0.1:{proxy.port}/fwd/v1/x".encode()

    with await proxy.capture() as capture:
        a, b = list(capture.exchanges())
    assert a.upstream is not None and a.upstream.proxy_path == "added"
    assert (
        proxy_path_of(a.upstream.head)
        == f"http://127.0.0.1:{proxy.port}/openai/chat/completions?api-version=2"
    )
    lines = a.upstream.head.split(b"\r\n")
    assert lines[-3].startswith(b"X-Proxy-Path: ") and lines[-2:] == [
        b"",
        b"",
    ]  # the last header line
    assert strip_proxy_path(a.upstream.head) == a.upstream_wire_head
    assert b"X-Proxy-Path" not in (a.upstream_wire_head or b"")
    assert b.upstream is not None and b.upstream.proxy_path == "forwarded"
    assert b.upstream_wire_head == b.upstream.head  # forwarded: the stored head is the wire head


async def test_per_route_capture_off_and_sampling(start_upstream, start_proxy, tmp_path):
    upstream = await start_upstream(echo_cookie)
    from wirecap.proxy.config import load_toml

    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[[route]]
prefix = "/off/"
upstream = "{upstream.url}"
capture = false

[[route]]
prefix = "/none/"
upstream = "{upstream.url}"
sample = 0.0

[[route]]
prefix = "/all/"
upstream = "{upstream.url}"
sample = 1.0
"""
    )
    proxy = await start_proxy(doc=load_toml(config))
    async with httpx.AsyncClient() as client:
        for prefix in ("off", "none", "all"):
            for _ in range(3):
                assert (
                    await client.post(f"{proxy.url}/{prefix}/x", content=b"{}")
                ).status_code == 200
    with await proxy.capture() as capture:
        targets = [e.target for e in capture.exchanges()]
    assert targets == ["/all/x"] * 3
    assert proxy.console.getvalue().count("[not captured]") == 6


async def test_disk_full_stops_capture_but_traffic_continues(start_upstream, start_proxy, caplog):
    upstream = await start_upstream(echo_cookie)

    writer = full_disk_writer()
    proxy = await start_proxy(upstream=upstream.url, writer=writer)
    async with httpx.AsyncClient() as client:
        for i in range(30):
            r = await client.post(f"{proxy.url}/v1/x", content=json.dumps({"i": i}).encode())
            assert r.status_code == 200 and r.json() == {"i": i}
    await proxy.stop()
    stats = writer.statistics()
    assert stats.failed is not None and stats.records_lost > 0
    assert len([r for r in caplog.records if "CAPTURE STOPPED" in r.getMessage()]) == 1


async def test_a_write_error_stops_capture_not_traffic(start_upstream, start_proxy, caplog):
    """The writer cannot create its next segment (its directory is gone): capture stops, loudly and
    once, the records after it are counted as lost, and every request still works."""
    upstream = await start_upstream(echo_cookie)
    proxy = await start_proxy(upstream=upstream.url, rotate_bytes=1)  # a new segment per frame
    async with httpx.AsyncClient() as client:
        for i in range(6):
            if i == 2:
                await frames_written(proxy.writer, 1)  # the first frames are written...
                shutil.rmtree(proxy.out)  # ...then the directory for the next segment vanishes
            if i == 4:
                with trio.fail_after(30):  # the next rotation fails: from then on, records are lost
                    while proxy.writer.statistics().failed is None:
                        await trio.sleep(0.01)
            r = await client.post(f"{proxy.url}/v1/x", content=json.dumps({"i": i}).encode())
            assert r.status_code == 200 and r.json() == {"i": i}
    await proxy.stop()
    stats = proxy.writer.statistics()
    assert stats.failed is not None and "FileNotFoundError" in stats.failed
    assert stats.records_written > 0 and stats.records_lost > 0
    assert len([r for r in caplog.records if "CAPTURE STOPPED" in r.getMessage()]) == 1


async def test_a_ctrl_c_reaching_the_writer_process_does_not_cut_the_file(
    start_upstream, start_proxy
):
    """SIGINT reaches the whole process group from a terminal: the writer process ignores it and
    finishes the file when the proxy closes the pipe, index and footer included."""
    upstream = await start_upstream(echo_cookie)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        await client.post(f"{proxy.url}/v1/x", content=b'{"a": 1}')
        os.kill(proxy.writer.pid, signal.SIGINT)
        await client.post(f"{proxy.url}/v1/x", content=b'{"a": 2}')
    with await proxy.capture() as capture:
        assert all(f.indexed for f in capture.files)
        assert [e.request_body for e in capture.exchanges()] == [b'{"a": 1}', b'{"a": 2}']
    assert proxy.writer.statistics().failed is None


@pytest.mark.parametrize("fmt", ["text", "json", "quiet"])
async def test_console_line_per_exchange(start_upstream, start_proxy, fmt):
    upstream = await start_upstream(echo_cookie)
    proxy = await start_proxy(upstream=upstream.url, log_format=fmt)
    async with httpx.AsyncClient() as client:
        await client.post(f"{proxy.url}/v1/chat", content=b'{"a": 1}')
    await proxy.stop()
    lines = proxy.console.getvalue().splitlines()
    if fmt == "quiet":
        assert lines == []
        return
    assert len(lines) == 1
    if fmt == "json":
        row = json.loads(lines[0])
        assert row["method"] == "POST" and row["path"] == "/v1/chat" and row["status"] == 200
        assert row["upstream"] == f"{upstream.url}v1/chat"
        assert row["req_bytes"] == 8 and row["res_bytes"] == 8
        assert row["duration_ms"] >= row["ttfb_ms"] > 0
    else:
        assert f"POST /v1/chat -> {upstream.url}v1/chat 200 " in lines[0]
        assert "ttft=" in lines[0] and "8B/8B" in lines[0]


async def test_a_real_proxy_capture_cut_anywhere_reads_back_its_complete_frames(
    start_upstream, start_proxy, tmp_path
):
    """The crash-safety property on a capture the proxy wrote: cut at many offsets, every exchange
    whose frames all end before the cut reads back whole, and the cut is reported, not raised."""
    from wirecap.capture import frames, open_capture

    async def handler(ex):
        body = await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        for i in range(3):
            await ex.send_data(b"data: " + body + b" %d\n\n" % i)
        await ex.end()

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        for i in range(8):
            await client.post(f"{proxy.url}/v1/chat", content=b'{"n": %d}' % i)
            await frames_written(proxy.writer, i + 1)  # one frame per exchange
    with await proxy.capture() as capture:
        [path] = [f.path for f in capture.files]
        full = {e.id: e for e in capture.exchanges()}
        entries = {e.x: e for e in capture.files[0].index().entries}
    data = path.read_bytes()
    frame_ends = {
        f.offset: f.end for f in frames.iter_frames(data) if isinstance(f, frames.FrameInfo)
    }
    assert len(frame_ends) > 8
    cut_file = tmp_path / "cut.cbor.zst"
    for cut in range(frame_ends[0] + 1, len(data), max(1, len(data) // 400)):
        cut_file.write_bytes(data[:cut])
        with open_capture(cut_file) as capture:
            got = {e.id: e for e in capture.exchanges() if e.complete}
            if cut not in frame_ends.values():
                assert capture.damage and capture.damage[-1].end == cut
        expected = {
            x for x, entry in entries.items() if all(frame_ends[f] <= cut for f in entry.frames)
        }
        assert set(got) == expected
        for x in got:
            assert got[x].response_body == full[x].response_body
