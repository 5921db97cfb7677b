"""Routes and configuration: sans-IO, table-driven."""

from __future__ import annotations

import dataclasses

import pytest

from wirecap.proxy import http1
from wirecap.proxy.config import ConfigError, build_config, parse_route_spec, parse_upstream
from wirecap.proxy.routing import Router


def test_defaults_are_the_presets_on_5601():
    config = build_config()
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 5601)
    assert str(config.capture.out) == "captures"
    routes = {r.prefix: r.upstream.url for r in config.routes}
    assert routes["/openai"] == "https://api.openai.com/"
    assert routes["/anthropic"] == "https://api.anthropic.com/"
    assert routes["/ollama"] == "http://127.0.0.1:11434/"


@pytest.mark.parametrize(
    ("method", "host", "target", "expected"),
    [
        ("POST", "x", "/openai/v1/chat/completions", "https://api.openai.com/v1/chat/completions"),
        (
            "POST",
            "x",
            "/openai/v1/chat/completions?stream=1",
            "https://api.openai.com/v1/chat/completions?stream=1",
        ),
        ("GET", "x", "/openai", "https://api.openai.com/"),
        ("POST", "x", "/anthropic/v1/messages", "https://api.anthropic.com/v1/messages"),
        ("POST", "x", "/ollama/api/chat", "http://127.0.0.1:11434/api/chat"),
        ("POST", "x", "/openaix/v1", None),  # a prefix matches whole path segments only
        ("POST", "x", "/", None),
    ],
)
def test_preset_routing(method, host, target, expected):
    match = Router(build_config().routes).match(method, host, target)
    assert (match.upstream_url if match else None) == expected


def test_most_specific_route_wins_and_method_host_narrow():
    config = build_config(
        routes=[
            "/=http://catchall/",
            "/v1=http://v1/",
            "/v1/chat=http://chat/base",
            "POST /v1/embed=http://embed-post/",
        ],
        doc={"route": [{"prefix": "/v1", "host": "special.local", "upstream": "http://special/"}]},
    )
    router = Router(config.routes)
    assert router.match("GET", "a", "/other").upstream_url == "http://catchall/other"
    assert router.match("GET", "a", "/v1/models").upstream_url == "http://v1/models"
    assert (
        router.match("POST", "a", "/v1/chat/completions").upstream_url
        == "http://chat/base/completions"
    )
    assert router.match("POST", "a", "/v1/embed").upstream_url == "http://embed-post/"
    assert router.match("GET", "a", "/v1/embed").upstream_url == "http://v1/embed"
    assert (
        router.match("GET", "special.local:5601", "/v1/models").upstream_url
        == "http://special/models"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"routes": ["/a=http://x/", "/a/=http://y/"]}, "duplicate route /a"),
        ({"routes": ["/a"]}, "expected PREFIX=URL"),
        ({"routes": ["a=http://x/"]}, "must start with '/'"),
        ({"upstream": "ftp://x/"}, "http:// or https://"),
        ({"upstream": "http://x/?q=1"}, "query"),
        ({"listen": "localhost:http"}, "bad listen address"),
        ({"on_full": "maybe"}, "on_full"),
        (
            {"doc": {"route": [{"prefix": "/a", "upstream": "http://x/", "sample": 2}]}},
            "sample must be between",
        ),
        (
            {"doc": {"route": [{"prefix": "/a", "upstream": "http://x/", "bogus": 1}]}},
            "unknown route keys bogus",
        ),
        ({"redact_body": ["(unclosed"]}, "bad redaction pattern"),
        ({"timeouts": {"read": -1}}, "positive"),
        ({"doc": {"capture": {"adapt": "yes"}}}, "adapt must be true or false"),
        ({"doc": {"capture": {"level": 0}}}, "level must be an integer"),
    ],
)
def test_config_errors_are_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_config(**kwargs)
    assert "\n" not in str(info.value)


def test_capture_adapts_by_default_and_can_be_told_not_to():
    assert build_config().capture.adapt is True
    assert build_config(doc={"capture": {"adapt": False}}).capture.adapt is False


def test_route_spec_and_upstream_parsing():
    route = parse_route_spec("POST /v1=https://example.com:8443/base/")
    assert route.method == "POST" and route.prefix == "/v1"
    assert route.upstream == parse_upstream("https://example.com:8443/base")
    assert route.upstream.host_header == "example.com:8443"
    assert parse_upstream("https://api.openai.com").host_header == "api.openai.com"


def test_upstream_derived_fields_follow_its_address():
    ipv6 = parse_upstream("http://[::1]:8080/v1")
    assert ipv6.origin == ("http", "::1", 8080)
    assert (ipv6.host_header, ipv6.host_header_bytes) == ("[::1]:8080", b"[::1]:8080")
    assert (ipv6.origin_url, ipv6.url) == ("http://[::1]:8080", "http://[::1]:8080/v1")
    moved = dataclasses.replace(ipv6, port=80)  # derived again, not copied
    assert (moved.host_header, moved.url) == ("[::1]", "http://[::1]/v1")
    assert moved != ipv6 and ipv6 == parse_upstream("http://[::1]:8080/v1")
    assert (
        Router([parse_route_spec("/=http://[::1]:8080/v1")])
        .match("GET", None, "/models?x=1")
        .upstream_url
        == "http://[::1]:8080/v1/models?x=1"
    )


def test_upstream_head_keeps_lines_as_received_and_drops_hop_by_hop():
    lines = [
        b"Host: 127.0.0.1:5601",
        b"Connection: keep-alive, X-Private",
        b"X-Private: 1",
        b"Authorization:Bearer k",  # no space after the colon: forwarded as it is
        b"Keep-Alive: timeout=5",
        b"X-Proxy-Path: spoofed",
        b"content-type: application/json  ",
    ]
    raw = b"GET /v1/x?a=1 HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    head = http1.parse_request_head(raw, 1 << 16)
    assert head is not None and head.canonical is head.raw  # CRLF lines: no rewrite
    assert head.upstream_head(b"/x?a=1", b"api.openai.com") == (
        b"GET /x?a=1 HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization:Bearer k\r\n"
        b"content-type: application/json  \r\n\r\n"
    )
    assert head.upstream_head(b"/", b"h", b"http://p/v1/x").endswith(
        b"\r\nX-Proxy-Path: http://p/v1/x\r\n\r\n"
    )
