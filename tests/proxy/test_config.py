"""Routes and configuration, sans-IO and table-driven; then `wirecap proxy` through CliRunner, never started."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from click.testing import CliRunner

from wirecap.proxy.config import (
    ROUTE_KEYS,
    SETTINGS,
    TIMEOUT_FIELDS,
    ConfigError,
    Timeouts,
    build_config,
    parse_route_spec,
    parse_size,
    parse_upstream,
)
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
        ({"listen": "localhost:http"}, "listen: bad listen address"),
        ({"on_full": "maybe"}, "on_full must be 'block' or 'drop', not 'maybe'"),
        (
            {"doc": {"route": [{"prefix": "/a", "upstream": "http://x/", "sample": 2}]}},
            r"sample in \[\[route\]\] 1 must be a number from 0 to 1, not 2",
        ),
        (
            {"doc": {"route": [{"prefix": 1, "upstream": "http://x/"}]}},
            r"\[\[route\]\] 1: route needs a text 'prefix'",
        ),
        ({"doc": {"route": {"prefix": "/a"}}}, r"array of tables \(\[\[route\]\]\)"),
        ({"doc": {"capture": []}}, r"\[capture\] must be a table"),
        ({"redact_body": ["(unclosed"]}, "bad redaction pattern"),
        ({"timeouts": {"read": -1}}, "read_timeout must be a positive number of seconds"),
        ({"timeouts": {"client_head_x": 1}}, "unknown timeout 'client_head_x'"),
        ({"head_timeout": float("nan")}, "head_timeout must be a positive number"),
        (
            {"doc": {"timeouts": {"head_timeout": "30s"}}},
            r"head_timeout in \[timeouts\] must be a positive number of seconds, not '30s'",
        ),
        (
            {"doc": {"capture": {"compression_level": 0}}},
            r"compression_level in \[capture\] must be an integer from 1 to 19, not 0",
        ),
        ({"doc": {"capture": {"redact": "no"}}}, "redact in .* must be true or false"),
        ({"doc": {"capture": {"redact_headers": "x-a"}}}, "must be a list of text"),
        ({"doc": {"proxy": {"max_head": "64 KB please"}}}, "max_head in .* positive size"),
        ({"max_head": 0}, "max_head must be a positive size in bytes"),
        (
            {"doc": {"proxy": {"workers": 0}}},
            r"workers in \[proxy\] must be an integer from 1 to 64, not 0",
        ),
        ({"rotate_bytes": "0MiB"}, "rotate_bytes must be a positive size"),
        ({"doc": {"proxy": {"log_format": "xml"}}}, "'text' or 'json' or 'quiet'"),
    ],
)
def test_config_errors_are_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_config(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"proxy": {"lisen": "x"}}, "unknown key 'lisen' in [proxy]; did you mean 'listen'?"),
        (
            {"proxy": {"upstream_cert": "x"}},
            "unknown key 'upstream_cert' in [proxy]; did you mean 'upstream_ca'?",
        ),
        (
            {"capture": {"on_ful": "drop"}},
            "unknown key 'on_ful' in [capture]; did you mean 'on_full'?",
        ),
        (
            {"timeouts": {"read": 5}},
            "unknown key 'read' in [timeouts]; did you mean 'read_timeout'?",
        ),
        (
            {"route": [{"prefix": "/a", "upstream": "http://x/", "metod": "POST"}]},
            "unknown key 'metod' in [[route]] 1; did you mean 'method'?",
        ),
        # another name of the setting: its field in the Python API, or a former flag
        (
            {"timeouts": {"client_head": 5}},
            "unknown key 'client_head' in [timeouts]; did you mean 'head_timeout'?",
        ),
        (
            {"capture": {"level": 3}},
            "unknown key 'level' in [capture]; did you mean 'compression_level'?",
        ),
        (
            {"capture": {"rotate_size": 1}},
            "unknown key 'rotate_size' in [capture]; did you mean 'rotate_bytes'?",
        ),
        # a key in the wrong table, or outside any
        (
            {"capture": {"listen": "x"}},
            "unknown key 'listen' in [capture]; did you mean 'listen' in [proxy]?",
        ),
        (
            {"capture": {"enabled": False}},
            "unknown key 'enabled' in [capture]; did you mean 'capture' in [proxy]?",
        ),
        (
            {"max_head": 1},
            "unknown key 'max_head' outside any table; did you mean 'max_head' in [proxy]?",
        ),
        ({"captur": {"out": "x"}}, "unknown table [captur]; did you mean [capture]?"),
        ({"routes": {}}, "unknown table [routes]; did you mean [route]?"),
        ({"admin": {}}, "unknown table [admin]; tables: proxy, capture, timeouts, route"),
        # nothing close: the valid keys
        (
            {"capture": {"adapt": False}},
            "unknown key 'adapt' in [capture]; valid keys: out, on_full, redact, redact_headers, "
            "redact_body, rotate_bytes, rotate_seconds, compression_level",
        ),
    ],
)
def test_unknown_keys_name_their_table_and_the_closest_key(doc, message):
    with pytest.raises(ConfigError) as info:
        build_config(doc=doc)
    assert str(info.value) == message


def test_setting_names_are_unique_across_tables_and_routes_reuse_them():
    keys = [key for table in SETTINGS.values() for key in table]
    assert len(keys) == len(set(keys))
    assert set(TIMEOUT_FIELDS) == set(SETTINGS["timeouts"])
    assert set(TIMEOUT_FIELDS.values()) == {f.name for f in dataclasses.fields(Timeouts)}
    # a route's own settings share the global names
    assert {"connect_timeout", "read_timeout", "redact_headers", "redact_body"} <= set(ROUTE_KEYS)


def test_keywords_win_over_the_document_and_lists_add_to_it():
    doc = {
        "proxy": {"listen": ":7000", "upstream": "http://doc/"},
        "capture": {"redact_headers": ["X-Doc"], "compression_level": 3},
        "timeouts": {"head_timeout": 7, "read_timeout": 8},
    }
    config = build_config(
        doc=doc,
        listen=":7001",
        upstream="http://flag/",
        redact_headers=["X-Flag"],
        head_timeout=9,
        timeouts={"client_head": 1, "connect": 2},
    )
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 7001)
    assert [r.upstream.url for r in config.routes] == ["http://flag/"]
    assert config.capture.redact_headers[-2:] == ("x-doc", "x-flag")
    assert config.capture.level == 3
    assert (config.timeouts.client_head, config.timeouts.read, config.timeouts.connect) == (9, 8, 2)


def test_sizes_read_as_integers_or_with_a_unit():
    config = build_config(doc={"proxy": {"max_head": 4096}, "capture": {"rotate_bytes": "1.5 MiB"}})
    assert (config.limits.max_head, config.capture.rotate_bytes) == (4096, 1536 * 1024)
    assert build_config(max_head="16k").limits.max_head == 16 * 1024


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


# The command line: each flag of `wirecap proxy` is a setting of the same name.

#: One example per setting: the flag's arguments, and the same value in a config file. Relative
#: paths are those of the test's working directory, where ca.pem exists.
EXAMPLES = {
    "listen": (["--listen", "0.0.0.0:8080"], '[proxy]\nlisten = "0.0.0.0:8080"'),
    "upstream": (["--upstream", "http://h:9/v1"], '[proxy]\nupstream = "http://h:9/v1"'),
    "route": (
        ["--route", "POST /a=http://x/"],
        '[[route]]\nmethod = "POST"\nprefix = "/a"\nupstream = "http://x/"',
    ),
    "upstream_ca": (["--upstream-ca", "ca.pem"], '[proxy]\nupstream_ca = "ca.pem"'),
    "log_format": (["--log-format", "json"], '[proxy]\nlog_format = "json"'),
    "max_head": (["--max-head", "8KiB"], '[proxy]\nmax_head = "8KiB"'),
    "capture": (["--no-capture"], "[proxy]\ncapture = false"),
    "out": (["--out", "elsewhere"], '[capture]\nout = "elsewhere"'),
    "on_full": (["--on-full", "drop"], '[capture]\non_full = "drop"'),
    "redact": (["--no-redact"], "[capture]\nredact = false"),
    "redact_headers": (
        ["--redact-headers", "X-Team", "--redact-headers", "X-Org"],
        '[capture]\nredact_headers = ["X-Team", "X-Org"]',
    ),
    "redact_body": (["--redact-body", "ghp_[a-z]{9}"], "[capture]\nredact_body = ['ghp_[a-z]{9}']"),
    "rotate_bytes": (["--rotate-bytes", "1GiB"], '[capture]\nrotate_bytes = "1GiB"'),
    "rotate_seconds": (["--rotate-seconds", "60"], "[capture]\nrotate_seconds = 60"),
    "compression_level": (["--compression-level", "9"], "[capture]\ncompression_level = 9"),
    "connect_timeout": (["--connect-timeout", "2.5"], "[timeouts]\nconnect_timeout = 2.5"),
    "read_timeout": (["--read-timeout", "30"], "[timeouts]\nread_timeout = 30"),
    "write_timeout": (["--write-timeout", "5"], "[timeouts]\nwrite_timeout = 5"),
    "head_timeout": (["--head-timeout", "3"], "[timeouts]\nhead_timeout = 3"),
    "body_timeout": (["--body-timeout", "7"], "[timeouts]\nbody_timeout = 7"),
    "keepalive_timeout": (["--keepalive-timeout", "1"], "[timeouts]\nkeepalive_timeout = 1"),
    "pool_idle_timeout": (["--pool-idle-timeout", "4"], "[timeouts]\npool_idle_timeout = 4"),
    "shutdown_timeout": (["--shutdown-timeout", "0.5"], "[timeouts]\nshutdown_timeout = 0.5"),
    "admin": (["--admin", "127.0.0.1:5602"], '[proxy]\nadmin = "127.0.0.1:5602"'),
    "admin_token": (["--admin-token", "s3cret"], '[proxy]\nadmin_token = "s3cret"'),
    "ready_min_free_disk": (["--ready-min-free-disk", "5%"], '[proxy]\nready_min_free_disk = "5%"'),
    "fault": (
        ["--fault", "429,every=2", "--fault", "stall,ms=10"],
        '[proxy]\nfault = ["429,every=2", "stall,ms=10"]',
    ),
    "workers": (["--workers", "3"], "[proxy]\nworkers = 3"),
}
#: Options of `wirecap proxy` that are not settings.
NOT_SETTINGS = {
    "config": "names the config file",
    "quiet": "shorthand for --log-format quiet",
    "ui": "--ui starts the inspector beside the proxy: a companion, not a proxy setting",
    "ship": "--ship starts a shipper beside the proxy; its settings are the [ship] table",
}


class Built(Exception):
    """Raised in place of running the proxy, carrying the config the command built."""

    def __init__(self, config):
        super().__init__()
        self.config = config


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """The `wirecap` command line, with a proxy that is never started."""
    import wirecap.cli

    def no_proxy(config, banner=None, **_):
        raise AssertionError("the proxy was started")

    monkeypatch.setattr(wirecap.cli, "run_proxy", no_proxy)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.pem").write_text("")
    return wirecap.cli


@pytest.fixture
def built(cli, monkeypatch, tmp_path):
    """``built(args, toml=None)``: the ProxyConfig that ``wirecap proxy ARGS`` would run."""
    real = cli.build_config

    def build_and_stop(**kwargs):
        raise Built(real(**kwargs))

    monkeypatch.setattr(cli, "build_config", build_and_stop)

    def run(args, toml=None):
        if toml is not None:
            (tmp_path / "wirecap.toml").write_text(toml)
            args = ["--config", "wirecap.toml", *args]
        result = CliRunner().invoke(cli.main, ["proxy", *args])
        assert isinstance(result.exception, Built), result.output
        return result.exception.config

    return run


def option_name(param):
    return max(param.opts, key=len).lstrip("-").replace("-", "_")


def test_every_flag_is_a_setting_and_every_setting_a_flag(cli):
    options = {option_name(p): p for p in cli.proxy_command.params}
    settings = {key for table in SETTINGS.values() for key in table} | {"route"}
    assert set(options) - set(NOT_SETTINGS) == settings == set(EXAMPLES)
    for name in settings:
        assert options[name].help and "--" + name.replace("_", "-") in options[name].opts


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_flag_and_its_toml_key_set_the_same(built, name):
    args, toml = EXAMPLES[name]
    doc = tomllib.loads(toml)
    table = next((t for t, keys in SETTINGS.items() if name in keys), None)
    if table is None:  # [[route]]: a top-level array of tables
        assert list(doc) == [name]
    else:
        assert doc == {table: {name: doc[table][name]}}
    by_flag, by_file = built(args), built([], toml)
    assert by_flag == by_file
    assert by_flag != built([])  # the example is not the default


def test_flags_override_the_file_and_quiet_is_log_format_quiet(built):
    toml = '[proxy]\nlisten = ":7000"\nlog_format = "json"'
    config = built(["--listen", ":7001", "-q"], toml)
    assert (config.listen_port, config.log_format) == (7001, "quiet")
    assert built(["-q"]) == built(["--log-format", "quiet"])


def test_a_bad_config_key_is_one_line_and_no_proxy_starts(cli, tmp_path):
    (tmp_path / "bad.toml").write_text('[proxy]\nlisen = "127.0.0.1:0"\n')
    result = CliRunner().invoke(cli.main, ["proxy", "--config", "bad.toml"])
    assert result.exit_code == 2, result.output
    assert result.output == "Error: unknown key 'lisen' in [proxy]; did you mean 'listen'?\n"


@pytest.mark.parametrize("text", ["65536", "512KiB", "256MiB", "1G", "1.5k", "2 mb", " 3 "])
def test_sizes_read_the_same_in_flags_and_in_the_file(cli, text):
    assert cli.ByteSize().convert(text, None, None) == parse_size(text)
