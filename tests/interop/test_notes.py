"""inspect --id shows an exchange's notes (import provenance, injected faults) in a "notes"
block, and inspect --json in a ``notes`` field."""

from __future__ import annotations

import json

from interop_tools import run

from wirecap.capture.records import ExchangeNote
from wirecap.inspect.views import notes_lines


def test_notes_block_names_each_kind():
    notes = [
        ExchangeNote(
            x="a" * 12,
            kind="import",
            detail={
                "source": "har",
                "file": "s.har",
                "entry": 3,
                "approximate": ["head rebuilt", "no chunk timing"],
            },
        ),
        ExchangeNote(
            x="a" * 12,
            kind="fault",
            detail={"kind": "429", "spec": "429,retry-after=2", "retry_after": 2},
        ),
        ExchangeNote(x="a" * 12, kind="other", detail={"why": "test"}),
    ]
    assert list(notes_lines(notes)) == [
        "--- notes",
        "import from har: s.har, entry 3; approximate: head rebuilt, no chunk timing",
        "fault 429 (--fault 429,retry-after=2): retry_after=2",
        'other: why="test"',
    ]
    assert list(notes_lines([])) == []


async def test_inspect_shows_import_notes_as_text_and_json(cassette, tmp_path):
    out = tmp_path / "out"
    assert run("import", cassette, "-o", out).exit_code == 0
    rows = [json.loads(line) for line in run("inspect", out, "--json").output.splitlines()]
    note = rows[0]["notes"][0]
    assert note["kind"] == "import"
    assert note["detail"]["source"] == "vcr" and note["detail"]["entry"] == 0
    detail = run("inspect", out, "--id", rows[1]["id"]).output.splitlines()
    at = detail.index("--- notes")
    line = detail[at + 1]
    assert line.startswith(f"import from vcr: {cassette}, entry 1; approximate: ")
    assert "head rebuilt" in line and "no timing" in line
    one = json.loads(run("inspect", out, "--id", rows[1]["id"], "--json").output)
    assert one["notes"] == rows[1]["notes"]
