"""The admin listener: /healthz, /readyz and Prometheus /metrics beside a real proxy."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
from pathlib import Path

import httpx
import pytest
import trio
from click.testing import CliRunner
from helpers import full_disk_writer
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from wirecap.cli import main
from wirecap.proxy.admin import (
    AdminServer,
    Check,
    authorized,
    disk_check,
    readiness_answer,
)
from wirecap.proxy.app import make_admin, run_proxy
from wirecap.proxy.config import (
    AdminSettings,
    ConfigError,
    DiskThreshold,
    build_config,
    is_loopback,
)
from wirecap.proxy.metrics import is_upstream_error, method_label

# -- sans-IO parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "total", "required"),
    [
        ("1GiB", 10 * 2**30, 2**30),
        ("5%", 100 * 2**30, 5 * 2**30),
        ("0", 2**40, 0),
        (512, 2**40, 512),
    ],
)
def test_the_free_disk_threshold_is_a_size_or_a_percentage(value, total, required):
    threshold = build_config(ready_min_free_disk=value).admin.min_free_disk
    assert threshold.required(total) == required


@pytest.mark.parametrize("value", ["100%", "-1%", "lots", "%", "-5"])
def test_a_bad_free_disk_threshold_is_one_line(value):
    with pytest.raises(ConfigError, match=r"^ready_min_free_disk must be a size"):
        build_config(ready_min_free_disk=value)


def test_admin_is_off_unless_asked_and_defaults_to_loopback():
    assert build_config().admin == AdminSettings()
    assert build_config().admin.address is None
    assert build_config(admin=":5602").admin.address == ("127.0.0.1", 5602)
    doc = {"proxy": {"admin": "127.0.0.1:5603", "ready_min_free_disk": "5%"}}
    admin = build_config(doc=doc).admin
    assert admin.address == ("127.0.0.1", 5603)
    assert admin.min_free_disk == DiskThreshold(free_percent=5)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "admin.example"])
def test_an_admin_address_off_loopback_needs_a_token(host):
    with pytest.raises(ConfigError, match="is not loopback: give --admin-token"):
        build_config(admin=f"[{host}]:5602")
    settings = build_config(admin=f"[{host}]:5602", admin_token="s3cret").admin
    assert settings.token == "s3cret"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
    ],
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_the_token_comes_from_the_environment_too(monkeypatch):
    import wirecap.cli

    seen = {}

    def no_proxy(config, banner=None, **_):
        seen["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr(wirecap.cli, "run_proxy", no_proxy)
    monkeypatch.setenv("WIRECAP_ADMIN_TOKEN", "from-env")
    CliRunner().invoke(main, ["proxy", "--admin", "0.0.0.0:5602", "--no-capture"])
    assert seen["config"].admin.token == "from-env"
    monkeypatch.delenv("WIRECAP_ADMIN_TOKEN")
    result = CliRunner().invoke(main, ["proxy", "--admin", "0.0.0.0:5602", "--no-capture"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "is not loopback" in result.output


@pytest.mark.parametrize(
    ("token", "header", "ok"),
    [
        (None, None, True),
        ("t0k", None, False),
        ("t0k", b"Bearer t0k", True),
        ("t0k", b"bearer t0k", True),
        ("t0k", b"Bearer t0", False),
        ("t0k", b"Basic t0k", False),
        ("t0k", b"t0k", False),
        ("clé", "Bearer clé".encode(), True),
        ("clé", "Bearer cle\u0301".encode(), False),
        ("t0k", "Bearer té".encode("latin-1"), False),
    ],
)
def test_authorization(token, header, ok):
    assert authorized(token, header) is ok


def test_readiness_names_what_is_wrong():
    good = Check(check="accepting", ok=True)
    bad = Check(check="upstream", ok=False, problem="upstream x is unreachable", details={"a": 1})
    assert readiness_answer([good]) == (
        200,
        {"ready": True, "problems": [], "checks": [{"check": "accepting", "ok": True}]},
    )
    status, body = readiness_answer([good, bad])
    assert status == 503 and body["problems"] == ["upstream x is unreachable"]
    assert body["checks"][1] == {"check": "upstream", "ok": False, "a": 1}


def test_disk_check():
    threshold = DiskThreshold(free_bytes=2**30)
    assert disk_check(Path("c"), 2**31, 2**40, threshold).ok
    low = disk_check(Path("c"), 2**29, 2**40, threshold)
    assert (
        not low.ok and low.problem == "free disk for c is 512 MiB, below the threshold of 1024 MiB"
    )


def test_labels_stay_bounded():
    assert [method_label(m) for m in ("POST", "GET", "BREW", "post")] == [
        "POST",
        "GET",
        "OTHER",
        "OTHER",
    ]
    assert is_upstream_error("upstream_error", "upstream_unreachable")
    assert is_upstream_error("timeout", "upstream_timeout")
    assert not is_upstream_error("timeout", "shutting_down")
    assert not is_upstream_error("client_abort", "upstream_error")  # a client that went away


# -- a real proxy and its admin listener ----------------------------------------------------------------


async def start_admin(nursery, proxy) -> str:
    admin = make_admin(proxy.server)
    assert isinstance(admin, AdminServer)
    await nursery.start(admin.run)
    return admin.url


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics text, parsed by prometheus_client's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics, name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


async def echo(ex):
    body = await ex.read_body()
    await ex.respond(200, body, [("Content-Type", "application/json")])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: An upstream for tests that send no traffic (a proxy with no route would probe the presets).
LOCAL = f"http://127.0.0.1:{closed_port()}/"


async def test_metrics_count_exchanges_by_route_method_and_status(
    start_upstream, start_proxy, nursery
):
    upstream = await start_upstream(echo)
    down = f"http://127.0.0.1:{closed_port()}/"
    proxy = await start_proxy(
        routes=[f"/llm={upstream.url}", f"/down={down}"], admin="127.0.0.1:0", log_format="quiet"
    )
    admin = await start_admin(nursery, proxy)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            r = await client.post(f"{proxy.url}/llm/v1/chat", content=b'{"hi": 1}')
            assert r.status_code == 200
        assert (await client.get(f"{proxy.url}/nowhere")).status_code == 404
        assert (await client.request("BREW", f"{proxy.url}/llm/pot")).status_code == 200
    async with httpx.AsyncClient() as client:  # the proxy closes the connection after a 502
        assert (await client.post(f"{proxy.url}/down/v1", content=b"{}")).status_code == 502
        response = await client.get(f"{admin}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = samples(response.text)
    requests = "wirecap_proxy_requests_total"
    assert value(m, requests, route="/llm", method="POST", status="200", outcome="ok") == 3
    assert value(m, requests, route="/llm", method="OTHER", status="200", outcome="ok") == 1
    assert value(m, requests, route="none", method="GET", status="404", outcome="ok") == 1
    assert (
        value(m, requests, route="/down", method="POST", status="502", outcome="upstream_error")
        == 1
    )
    errors = "wirecap_proxy_upstream_errors_total"
    assert value(m, errors, route="/down", kind="upstream_unreachable") == 1
    assert (errors, frozenset({("route", "/llm"), ("kind", "upstream_error")})) not in m
    assert value(m, "wirecap_proxy_request_bytes_total", route="/llm") == 3 * len(b'{"hi": 1}')
    assert value(m, "wirecap_proxy_response_bytes_total", route="/llm") == 3 * len(b'{"hi": 1}')
    for histogram in ("time_to_first_byte", "duration"):
        name = f"wirecap_proxy_{histogram}_seconds"
        assert value(m, f"{name}_count", route="/llm") == 4
        assert value(m, f"{name}_bucket", route="/llm", le="+Inf") == 4
        assert value(m, f"{name}_count", route="/down") == 1
    assert value(m, "wirecap_proxy_in_flight") == 0
    assert value(m, "wirecap_proxy_connections_total") >= 1
    assert value(m, "wirecap_capture_enabled") == 1
    assert value(m, "wirecap_capture_stopped") == 0
    assert value(m, "wirecap_capture_records_lost_total") == 0
    assert value(m, "wirecap_capture_records_dropped_total") == 0
    assert value(m, "wirecap_capture_backlog_bytes") >= 0
    await proxy.stop()  # the writer has written every record once it has finished
    async with httpx.AsyncClient() as client:
        m = samples((await client.get(f"{admin}/metrics")).text)
    assert value(m, "wirecap_capture_records_written_total") > 0
    assert value(m, "wirecap_capture_bytes_written_total") > 0


async def test_in_flight_counts_an_exchange_still_streaming(start_upstream, start_proxy, nursery):
    release = trio.Event()

    async def stream(ex):
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        await ex.send_data(b"data: first\n\n")
        await release.wait()
        await ex.end()

    upstream = await start_upstream(stream)
    proxy = await start_proxy(upstream=upstream.url, admin="127.0.0.1:0", capture=False)
    admin = await start_admin(nursery, proxy)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    async with stream, httpx.AsyncClient() as client:
        await stream.send_all(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        seen = b""
        while b"data: first" not in seen:  # the first event arrived: the exchange is in flight
            seen += await stream.receive_some(65536)
        m = samples((await client.get(f"{admin}/metrics")).text)
        assert value(m, "wirecap_proxy_in_flight") == 1
        release.set()
        while not seen.endswith(b"0\r\n\r\n"):
            seen += await stream.receive_some(65536)
        with trio.fail_after(30):  # the proxy ends the exchange just after its last byte
            while value(m, "wirecap_proxy_in_flight") != 0:
                m = samples((await client.get(f"{admin}/metrics")).text)
    assert value(m, "wirecap_capture_enabled") == 0
    assert ("wirecap_capture_stopped", frozenset()) not in m
    requests = "wirecap_proxy_requests_total"
    assert value(m, requests, route="/", method="POST", status="200", outcome="ok") == 1


async def test_readyz_turns_503_when_the_upstream_is_down(start_proxy, nursery):
    listeners = await trio.open_tcp_listeners(
        0, host="127.0.0.1"
    )  # takes connections, answers none
    port = listeners[0].socket.getsockname()[1]
    proxy = await start_proxy(
        routes=[f"/a=http://127.0.0.1:{port}/v1", f"POST /b=http://127.0.0.1:{port}/"],
        admin="127.0.0.1:0",
        ready_min_free_disk="0",
    )
    admin_server = make_admin(proxy.server)
    admin_server.readiness.cache_seconds = 0  # every probe connects anew
    await nursery.start(admin_server.run)
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"{admin_server.url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["ready"] is True
        checks = {c["check"]: c for c in ready.json()["checks"]}
        assert set(checks) == {"accepting", "upstream", "capture_writer", "free_disk"}
        assert checks["upstream"]["routes"] == ["/a", "/b method POST"]
        for listener in listeners:
            await listener.aclose()
        down = await client.get(f"{admin_server.url}/readyz")
    assert down.status_code == 503
    body = down.json()
    assert body["ready"] is False
    [problem] = body["problems"]
    assert problem.startswith(f"upstream http://127.0.0.1:{port} (routes /a, /b method POST)")
    assert "unreachable: cannot connect to" in problem
    [upstream] = [c for c in body["checks"] if c["check"] == "upstream"]
    assert upstream["ok"] is False and upstream["error"]


async def test_readyz_probes_are_reused_for_a_while(start_proxy, nursery):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    proxy = await start_proxy(upstream=f"http://127.0.0.1:{port}/", admin="127.0.0.1:0")
    admin_server = make_admin(proxy.server)
    admin_server.readiness.cache_seconds = 3600
    await nursery.start(admin_server.run)
    async with httpx.AsyncClient() as client:
        first = await client.get(f"{admin_server.url}/readyz")
        for listener in listeners:
            await listener.aclose()
        second = await client.get(f"{admin_server.url}/readyz")
    upstream_checks = [
        [c for c in r.json()["checks"] if c["check"] == "upstream"] for r in (first, second)
    ]
    assert upstream_checks[0] == upstream_checks[1] and upstream_checks[0][0]["ok"] is True


async def test_readyz_fails_when_capture_stopped_or_the_disk_is_full(
    start_upstream, start_proxy, nursery
):
    upstream = await start_upstream(echo)

    writer = full_disk_writer()
    proxy = await start_proxy(
        upstream=upstream.url, writer=writer, admin="127.0.0.1:0", ready_min_free_disk="1024TiB"
    )
    proxy.out.mkdir()
    admin = await start_admin(nursery, proxy)
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while writer.statistics().failed is None:
                r = await client.post(f"{proxy.url}/v1/x", content=b"x" * 1000)
                assert r.status_code == 200
        ready = await client.get(f"{admin}/readyz")
        m = samples((await client.get(f"{admin}/metrics")).text)
    assert ready.status_code == 503
    problems = ready.json()["problems"]
    assert len(problems) == 2
    assert problems[0].startswith("capture stopped: ")
    assert re.fullmatch(
        rf"free disk for {re.escape(str(proxy.out))} is \d+ MiB, below the threshold of "
        rf"{1024 * 2**20} MiB",
        problems[1],
    )
    assert value(m, "wirecap_capture_stopped") == 1


async def test_readyz_fails_once_shutting_down(start_proxy, nursery):
    proxy = await start_proxy(capture=False, admin="127.0.0.1:0", upstream=LOCAL)
    admin = await start_admin(nursery, proxy)
    proxy.server.shutdown()
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"{admin}/readyz")
    assert ready.status_code == 503
    assert "the proxy is shutting down" in ready.json()["problems"]


async def test_health_paths_methods_and_head(start_proxy, nursery):
    proxy = await start_proxy(capture=False, admin="127.0.0.1:0", upstream=LOCAL)
    admin = await start_admin(nursery, proxy)
    async with httpx.AsyncClient() as client:
        health = await client.get(f"{admin}/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "alive"})
        head = await client.head(f"{admin}/metrics")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert (await client.get(f"{admin}/metrics?x=1")).status_code == 200
        missing = await client.get(f"{admin}/")
        assert missing.status_code == 404 and missing.json()["paths"] == [
            "/healthz",
            "/readyz",
            "/metrics",
        ]
        post = await client.post(f"{admin}/healthz", content=b"{}")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_malformed_admin_requests_get_400(start_proxy, nursery):
    proxy = await start_proxy(capture=False, admin="127.0.0.1:0", upstream=LOCAL)
    admin_server = make_admin(proxy.server)
    host, port = await nursery.start(admin_server.run)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n")
        answer = b""
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_a_token_guards_every_path(start_proxy, nursery):
    proxy = await start_proxy(capture=False, admin="127.0.0.1:0", admin_token="t0k", upstream=LOCAL)
    admin = await start_admin(nursery, proxy)
    async with httpx.AsyncClient() as client:
        for path in ("/healthz", "/readyz", "/metrics", "/nothing"):
            refused = await client.get(f"{admin}{path}")
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            wrong = await client.get(f"{admin}{path}", headers={"Authorization": "Bearer t0"})
            assert wrong.status_code == 401
        allowed = await client.get(f"{admin}/healthz", headers={"Authorization": "Bearer t0k"})
        assert allowed.status_code == 200


async def test_run_proxy_starts_the_admin_listener_and_counts_nothing_without_it(
    start_upstream, tmp_path
):
    upstream = await start_upstream(echo)
    for admin in (None, "127.0.0.1:0"):
        config = build_config(
            listen="127.0.0.1:0",
            upstream=upstream.url,
            out=tmp_path / str(admin),
            log_format="quiet",
            admin=admin,
            ready_min_free_disk="0",
        )
        banner = io.StringIO()
        ran = {}
        async with trio.open_nursery() as nursery:

            async def run(task_status, config=config, banner=banner, ran=ran):
                ran["server"] = await run_proxy(config, banner=banner, task_status=task_status)

            _host, port = await nursery.start(run)
            async with httpx.AsyncClient() as client:
                r = await client.post(f"http://127.0.0.1:{port}/v1/x", content=b"{}")
                assert r.status_code == 200
                found = re.search(
                    r"admin on (http://\S+) \(/healthz, /readyz, /metrics\)", banner.getvalue()
                )
                if admin is None:
                    assert found is None
                else:
                    assert found is not None
                    url = found.group(1)
                    assert (await client.get(f"{url}/healthz")).status_code == 200
                    assert (await client.get(f"{url}/readyz")).status_code == 200
                    m = samples((await client.get(f"{url}/metrics")).text)
                    assert (
                        value(
                            m,
                            "wirecap_proxy_requests_total",
                            route="/",
                            method="POST",
                            status="200",
                            outcome="ok",
                        )
                        == 1
                    )
            os.kill(os.getpid(), signal.SIGTERM)
        assert (ran["server"].metrics is None) is (admin is None)


def test_a_taken_admin_address_is_one_line_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["proxy", "--listen", "127.0.0.1:0", "--admin", f"127.0.0.1:{port}", "--no-capture"],
        )
    assert result.exit_code == 1
    assert re.fullmatch(
        rf"Error: cannot listen on 127\.0\.0\.1:{port} \(--admin\): [^\n]+\n", result.output
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_capture_directory_that_cannot_be_made_is_one_line_naming_it(tmp_path, workers):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "captures"
    result = CliRunner().invoke(
        main, ["proxy", "--listen", "127.0.0.1:0", "--out", str(out), "--workers", workers]
    )
    assert result.exit_code == 1
    assert re.fullmatch(
        rf"Error: cannot create the capture directory {out}: [^\n]+\n", result.output
    )


async def test_a_scraper_asking_for_openmetrics_gets_it(start_upstream, start_proxy, nursery):
    upstream = await start_upstream(echo)
    proxy = await start_proxy(upstream=upstream.url, admin="127.0.0.1:0", capture=False)
    admin = await start_admin(nursery, proxy)
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{proxy.url}/v1/x", content=b"{}")).status_code == 200
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        response = await client.get(f"{admin}/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(response.text)}
    [sample] = [s for s in families["wirecap_proxy_requests"].samples if s.name.endswith("_total")]
    assert sample.labels == {"route": "/", "method": "POST", "status": "200", "outcome": "ok"}
    assert sample.value == 1
