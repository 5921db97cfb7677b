"""``--fault`` on the command line: a bad spec is a one-line usage error, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wirecap.cli import main

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("teapot", "unknown fault kind 'teapot'"),
        ("429,retry-after=soon", "retry-after=soon: not a number of seconds"),
        ("stall,every=0", "every=0: must be at least 1"),
        ("length,colour=red", "fault length takes no key 'colour'"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "proxy"])
def test_a_bad_fault_spec_is_a_one_line_error(command, spec, message):
    args = [command, str(FIXTURES)] if command == "serve" else [command]
    result = CliRunner().invoke(main, [*args, "--fault", "429", "--fault", spec])
    assert result.exit_code == 2
    assert f"Invalid value for '--fault': {message}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_toml_config_takes_faults_and_the_command_line_adds_to_them():
    from wirecap.proxy.config import ConfigError, build_config

    config = build_config(doc={"proxy": {"fault": ["429,every=2"]}}, fault=["stall,ms=10"])
    assert [(f.kind, f.every) for f in config.faults] == [("429", 2), ("stall", 1)]
    assert build_config().faults == ()
    with pytest.raises(ConfigError, match=r"^fault in \[proxy\]: unknown fault kind 'slow'"):
        build_config(doc={"proxy": {"fault": ["slow"]}})
    with pytest.raises(ConfigError, match=r"fault in \[proxy\] must be a list of fault specs"):
        build_config(doc={"proxy": {"fault": "429"}})
