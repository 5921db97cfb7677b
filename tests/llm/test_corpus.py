"""Analysis on real traffic recorded by others: every cassette of the corpus (tests/corpus/SOURCES.md)
is imported with ``wirecap import``; for each exchange, the model, usage, text, finish reason,
stream ending and tool call names wirecap reports are checked against the truth this module reads
from the cassette itself (its own small parsers of each wire format, not wirecap's adapters), and
``inspect --detect-issues --fail-on error`` must be clean: the corpus is clean traffic.

The cassettes come from ``WIRECAP_CORPUS`` or ``corpus/`` in the shared directory beside the
checkout (SOURCES.md says why they are not kept here); without either, the module is skipped.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from wirecap.capture import Exchange, open_capture
from wirecap.cli import main
from wirecap.inspect.analysis import analyze_exchange

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCES = ROOT / "tests" / "corpus" / "SOURCES.md"
PERMISSIVE = {"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause"}


def corpus_dir() -> Path | None:
    for candidate in (os.environ.get("WIRECAP_CORPUS"), ROOT.parent / "shared" / "corpus"):
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.yaml")):
            return Path(candidate)
    return None


CORPUS = corpus_dir()
pytestmark = pytest.mark.skipif(
    CORPUS is None, reason="no corpus: set WIRECAP_CORPUS (see tests/corpus/SOURCES.md)"
)
CASSETTES = sorted(CORPUS.glob("*.yaml")) if CORPUS is not None else []


# -- the recorded truth, read from the cassette ---------------------------------------------------


@dataclasses.dataclass
class Truth:
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    text: str = ""
    finish: str | None = None
    terminated: bool | None = None  # streams: the stream's own terminator arrived
    tools: list[str] = dataclasses.field(default_factory=list)


def body_of(response: dict[str, Any]) -> bytes:
    body = response["body"]
    raw = body.get("string", b"") if isinstance(body, dict) else body
    data = raw if isinstance(raw, bytes) else str(raw).encode()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def sse_payloads(data: bytes) -> list[str]:
    """The ``data:`` values of an event stream, one per event (multi-line data joined)."""
    events = []
    for block in re.split(r"\r?\n\r?\n", data.decode()):
        lines = [ln[5:].removeprefix(" ") for ln in block.splitlines() if ln.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events


def openai_chat(data: bytes, streamed: bool) -> Truth:
    t = Truth()
    if not streamed:
        body = json.loads(data)
        choice = body["choices"][0]
        message = choice["message"]
        calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
        legacy = message.get("function_call")
        usage = body.get("usage") or {}
        return Truth(
            model=body["model"],
            input_tokens=usage.get("prompt_tokens"),
            output_tokens=usage.get("completion_tokens"),
            text=message.get("content") or "",
            finish=choice["finish_reason"],
            tools=calls or ([legacy["name"]] if legacy else []),
        )
    t.terminated = False
    names: dict[int, str] = {}
    for payload in sse_payloads(data):
        if payload == "[DONE]":
            t.terminated = True
            continue
        chunk = json.loads(payload)
        t.model = chunk.get("model") or t.model
        if chunk.get("usage"):
            t.input_tokens = chunk["usage"]["prompt_tokens"]
            t.output_tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            t.text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                name = (call.get("function") or {}).get("name")
                if name:
                    names[call.get("index", 0)] = name
            t.finish = choice.get("finish_reason") or t.finish
    t.tools = [names[i] for i in sorted(names)]
    return t


def openai_responses(data: bytes, streamed: bool) -> Truth:
    if not streamed:
        return _response_object(json.loads(data), text=None)
    t = Truth(terminated=False)
    text = ""
    for payload in sse_payloads(data):
        event = json.loads(payload)
        if event["type"] == "response.output_text.delta":
            text += event["delta"]
        if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
            t = _response_object(event["response"], text=text)
            t.terminated = True
    return t


def _response_object(response: dict[str, Any], text: str | None) -> Truth:
    usage = response.get("usage") or {}
    output = response.get("output") or []
    parts = [
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    ]
    reason = (response.get("incomplete_details") or {}).get("reason")
    return Truth(
        model=response["model"],
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        text="".join(parts) if text is None else text,
        finish=reason or response["status"],
        tools=[item["name"] for item in output if item["type"] == "function_call"],
    )


def anthropic_messages(data: bytes, streamed: bool) -> Truth:
    if not streamed:
        body = json.loads(data)
        blocks = body["content"]
        return Truth(
            model=body["model"],
            input_tokens=body["usage"]["input_tokens"],
            output_tokens=body["usage"]["output_tokens"],
            text="".join(b["text"] for b in blocks if b["type"] == "text"),
            finish=body["stop_reason"],
            tools=[b["name"] for b in blocks if b["type"] in ("tool_use", "server_tool_use")],
        )
    t = Truth(terminated=False)
    for payload in sse_payloads(data):
        event = json.loads(payload)
        kind = event["type"]
        if kind == "message_start":
            t.model = event["message"]["model"]
            t.input_tokens = event["message"]["usage"]["input_tokens"]
        elif kind == "content_block_start" and event["content_block"]["type"] in (
            "tool_use",
            "server_tool_use",
        ):
            t.tools.append(event["content_block"]["name"])
        elif kind == "content_block_delta" and event["delta"]["type"] == "text_delta":
            t.text += event["delta"]["text"]
        elif kind == "message_delta":
            t.finish = event["delta"]["stop_reason"]
            # message_delta's usage is cumulative: with server tools (web search) it carries
            # the final input count too, larger than message_start's.
            t.input_tokens = event["usage"].get("input_tokens", t.input_tokens)
            t.output_tokens = event["usage"]["output_tokens"]
        elif kind == "message_stop":
            t.terminated = True
    return t


def ollama(data: bytes, streamed: bool, key: str) -> Truth:
    lines = [json.loads(line) for line in data.splitlines() if line.strip()]
    last = lines[-1]
    text = "".join(
        (line.get("message") or {}).get("content", "") if key == "chat" else line["response"]
        for line in lines
    )
    calls = [
        c["function"]["name"]
        for line in lines
        for c in (line.get("message") or {}).get("tool_calls") or []
    ]
    return Truth(
        model=last["model"],
        input_tokens=last.get("prompt_eval_count"),
        output_tokens=last.get("eval_count"),
        text=text,
        finish=last.get("done_reason"),
        terminated=bool(last.get("done")) if streamed else None,
        tools=calls,
    )


def truth_of(interaction: dict[str, Any]) -> Truth | None:
    """What the recorded answer says, or None for an exchange that is no LLM call."""
    path = interaction["request"]["uri"].split("?", 1)[0]
    response = interaction["response"]
    headers = {k.lower(): v for k, v in response["headers"].items()}
    content_type = str((headers.get("content-type") or [""])[0])
    streamed = content_type.startswith(("text/event-stream", "application/x-ndjson"))
    data = body_of(response)
    if path.endswith("/chat/completions"):
        return openai_chat(data, streamed)
    if path.endswith("/responses"):
        return openai_responses(data, streamed)
    if path.endswith("/messages"):
        return anthropic_messages(data, streamed)
    if path.endswith(("/api/chat", "/api/generate")):
        return ollama(data, streamed, path.rsplit("/", 1)[-1])
    return None


# -- the corpus imported --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "capture"
    result = CliRunner().invoke(main, ["import", *map(str, CASSETTES), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def exchanges(imported) -> dict[tuple[str, int], Exchange]:
    """Every imported exchange by (cassette name, interaction number), from its import note."""
    found = {}
    with open_capture(imported) as capture:
        for ex in capture.exchanges():
            [note] = ex.notes_of("import")
            found[Path(note["file"]).name, note["entry"]] = ex
    return found


def interactions_of(cassette: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(cassette.read_bytes())["interactions"]


def test_every_cassette_has_its_source_and_a_permissive_licence():
    listed = {}
    for line in SOURCES.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].endswith(".yaml"):
            listed[cells[0]] = cells
    for cassette in CASSETTES:
        assert cassette.name in listed, f"{cassette.name} is not in SOURCES.md"
        _name, repo, path, commit, licence = listed[cassette.name]
        assert "/" in repo and path and re.fullmatch(r"[0-9a-f]{40}", commit), listed[cassette.name]
        assert licence in PERMISSIVE, listed[cassette.name]


def test_the_corpus_covers_each_api_json_and_streamed():
    kinds = set()
    for cassette in CASSETTES:
        for interaction in interactions_of(cassette):
            truth = truth_of(interaction)
            if truth is not None:
                api = interaction["request"]["uri"].split("?")[0].rsplit("/", 1)[-1]
                kinds.add((api, truth.terminated is not None))
    expected = {
        (api, streamed)
        for api in ("completions", "responses", "messages", "chat", "generate")
        for streamed in (False, True)
    }
    assert expected <= kinds


@pytest.mark.parametrize("cassette", CASSETTES, ids=lambda p: p.stem)
def test_facts_match_the_recorded_truth(cassette, exchanges):
    checked = 0
    for entry, interaction in enumerate(interactions_of(cassette)):
        ex = exchanges[cassette.name, entry]
        truth = truth_of(interaction)
        if truth is None:
            continue
        facts = analyze_exchange(ex).facts
        usage = facts.usage
        seen = Truth(
            model=facts.model_returned,
            input_tokens=usage.input if usage else None,
            output_tokens=usage.output if usage else None,
            text=facts.text,
            finish=facts.finish_reason,
            terminated=facts.terminated,
            tools=[call.name or "" for call in facts.tool_calls],
        )
        assert seen == truth, f"{cassette.name} interaction {entry}"
        checked += 1
    assert checked, f"{cassette.name} holds no LLM call"


def test_detect_issues_at_error_level_is_clean(imported):
    result = CliRunner().invoke(
        main, ["inspect", str(imported), "--detect-issues", "--fail-on", "error"]
    )
    assert result.exit_code == 0, result.output
    assert "ERROR" not in result.output
