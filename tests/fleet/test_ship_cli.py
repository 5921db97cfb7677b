"""``wirecap ship`` and ``wirecap collect`` on the command line: settings from flags and the TOML
config, credentials against a real nats-server, and one-line errors."""

from __future__ import annotations

import shutil
import signal
import sys

import pytest
import trio
from click.testing import CliRunner
from natsfleet import NatsServer, exchange_ids, nats_binary, wait_for_ids

from wirecap.cli import main

FIXTURE = "anthropic_message_stream.cbor.zst"


def fixture_dir(tmp_path):
    source = tmp_path / "captures"
    source.mkdir()
    fixtures = __import__("pathlib").Path(__file__).parent.parent.parent / "fixtures"
    shutil.copy(fixtures / FIXTURE, source / FIXTURE)
    return source


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["ship", "{dir}"], None, "where to ship: --to nats://HOST:4222"),
        (["ship", "{dir}", "--to", "http://x:1"], None, "use nats://HOST:PORT"),
        (["ship", "{dir}", "--to", "nats://h:1", "--source", "a.b"], None, "source name 'a.b'"),
        (["ship", "{dir}", "--to", "nats://h:1", "--password", "p"], None, "needs a user"),
        (
            ["ship", "{dir}", "--config", "{cfg}"],
            "[ship]\nto = 'nats://h:1'\ntoo = 1\n",
            "unknown key 'too' in [ship]",
        ),
        (["ship", "{dir}", "--config", "{cfg}"], "[ship\n", "is not valid TOML"),
        (["collect", "nats://h:1"], None, "where to write: --out DIR"),
        (["collect", "--out", "{dir}"], None, "which stream to collect"),
        (["collect", "nats://h:1", "--out", "{dir}", "--subject", "a..b"], None, "subject 'a..b'"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, args, config, message):
    cfg = tmp_path / "wirecap.toml"
    if config is not None:
        cfg.write_text(config)
    args = [a.format(dir=tmp_path, cfg=cfg) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_without_nats_py_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nats", None)  # as if nats-py were not installed
    result = CliRunner().invoke(main, ["ship", str(tmp_path), "--to", "nats://127.0.0.1:1"])
    assert result.exit_code == 1
    assert "pip install 'wirecap[fleet]'" in result.output


@pytest.fixture
async def nats_with_password(tmp_path):
    if nats_binary() is None:
        pytest.skip("nats-server is not installed")  # the fault tests fail instead under CI
    server = NatsServer(tmp_path / "js", ["--user", "shipper", "--pass", "s3cret"])
    await server.start()
    yield server
    await server.kill()


@pytest.mark.slow
async def test_credentials_from_the_config_and_flags(nats_with_password, children, tmp_path):
    source, central = fixture_dir(tmp_path), tmp_path / "central"
    url = nats_with_password.url
    cfg = tmp_path / "wirecap.toml"
    cfg.write_text(
        f"[ship]\nto = '{url}'\nuser = 'shipper'\npassword = 's3cret'\nsource = 'edge'\n"
    )
    wrong = children("ship", str(source), "--to", url, "--user", "shipper", "--password", "nope")
    shipper = children("ship", str(source), "--config", str(cfg))
    collector = children(
        "collect", url, "--out", str(central), "--user", "shipper", "--password", "s3cret"
    )
    await wait_for_ids(central, set(exchange_ids(source)))
    await trio.sleep(0.5)  # the wrong password has been tried (not needed for the result)
    for child in (shipper, collector, wrong):
        assert await child.stop(signal.SIGTERM) == 0, child.output()
    assert sorted(exchange_ids(central)) == sorted(exchange_ids(source))
    assert "Authorization Violation" in wrong.output()
    assert "Traceback" not in wrong.output()
    assert "shipped 0 frames" in wrong.output()
    assert "as edge" in shipper.output()


@pytest.fixture
async def nats_with_token_over_tls(tmp_path):
    """nats-server requiring TLS (a certificate for 127.0.0.1 from a test CA) and a token."""
    import trustme

    if nats_binary() is None:
        pytest.skip("nats-server is not installed")  # the fault tests fail instead under CI
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    tls = ["--tls", "--tlscert", str(files["cert"]), "--tlskey", str(files["key"])]
    server = NatsServer(tmp_path / "js", [*tls, "--auth", "t0ken"])
    await server.start()
    yield server, files["ca"]
    await server.kill()


@pytest.mark.slow
async def test_a_token_over_tls(nats_with_token_over_tls, children, tmp_path):
    server, ca = nats_with_token_over_tls
    source, central = fixture_dir(tmp_path), tmp_path / "central"
    secure = ["--token", "t0ken", "--tls-ca", str(ca)]
    shipper = children("ship", str(source), "--to", server.url, *secure)
    collector = children("collect", server.url, "--out", str(central), *secure)
    untrusted = children("ship", str(source), "--to", server.url, "--token", "t0ken")
    await wait_for_ids(central, set(exchange_ids(source)))
    for child in (shipper, collector, untrusted):
        assert await child.stop(signal.SIGTERM) == 0, child.output()
    assert sorted(exchange_ids(central)) == sorted(exchange_ids(source))
    assert "shipped 0 frames" in untrusted.output()  # no TLS trust: nothing went through
    assert "Traceback" not in untrusted.output()
