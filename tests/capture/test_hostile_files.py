"""Hostile and damaged capture files: every command answers cleanly, within bounded memory and work.

The property tests mutate a real capture and its index and run every command on the result in a
forked child whose address space is capped (tests/capture/hostile_runner.py); a traceback, an
exit status other than 0 or 1, a child that dies or hangs is a failure. The regression tests pin
one defect each, as it was reproduced.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from hostile import (
    CBOR_TYPES,
    CUT_ID,
    FRAME_ATTACKS,
    HUGE_CBOR,
    IDS,
    JSON_ID,
    SSE_ID,
    Runner,
    attach_index,
    data_frames,
    failures,
    frame_attack,
    index_bytes,
    index_paths,
    set_path,
    split_index,
    with_index,
    write_real_capture,
    zeros_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.captures import Spec, write_capture
from wirecap.capture import CaptureFile, decoding, open_capture, reader
from wirecap.inspect.analysis import analyze_exchange
from wirecap.llm.facts import EventAllowance
from wirecap.llm.streams import PIECE

MiB = 1024 * 1024
#: Memory a command may use beyond the runner's own, for the small files of these tests: the
#: reader's bound (a constant times the file's size plus 64 MiB) and room for inspect's analysis.
MEMORY = 96 * MiB


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_real_capture(tmp_path_factory.mktemp("real")).read_bytes()


@pytest.fixture(scope="module")
def runner():
    running = Runner()
    yield running
    running.close()


@functools.cache
def interpreter_memory() -> int:
    """The address space of a Python that has imported wirecap's command line, in bytes."""
    script = "import wirecap.cli, resource; print(open('/proc/self/statm').read().split()[0])"
    pages = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    return int(pages.stdout) * resource.getpagesize()


def wirecap(*args: object, memory: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``wirecap`` command (python -m wirecap), its address space capped at ``memory``
    bytes beyond what the interpreter and wirecap's modules take, when given."""
    cap = resource.RLIM_INFINITY if memory is None else interpreter_memory() + memory

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    done = subprocess.run(
        [sys.executable, "-m", "wirecap", *map(str, args)],
        capture_output=True,
        timeout=120,  # a hang guard
        preexec_fn=limit,
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "surrogateescape"),  # exact bytes: CRLF stays CRLF
        done.stderr.decode("utf-8", "replace"),
    )


def assert_clean(result: subprocess.CompletedProcess[str], status: int = 0) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, result.stderr


# -- regression tests: one per defect as it was reproduced -------------------------------------------


@pytest.mark.parametrize("entry", [5, "gap", b"gap", None, True, 1.5, [], [{"t": "gap"}]])
def test_a_gaps_entry_that_is_not_a_gap_map_is_damage_not_a_traceback(tmp_path, base, entry):
    _, index = split_index(base)
    path = tmp_path / "gaps.cbor.zst"
    path.write_bytes(with_index(base, set_path(index, ("gaps", 0), entry)))
    shown = wirecap("inspect", "--id", SSE_ID, path)
    assert_clean(shown)
    assert "index unreadable" in shown.stderr
    with open_capture(path) as capture:
        assert capture.get(SSE_ID) is not None
        assert [g.records for g in capture.gaps()] == [3]  # the scan's own index has the gap
    indexed = wirecap("index", path)
    assert_clean(indexed)
    assert "replaces the stored one" in indexed.stdout


def test_a_repeated_frame_offset_is_not_followed(tmp_path, base, frames_decoded):
    offset, index = split_index(base)
    frames_of_json = index["columns"]["frames"][0]
    path = tmp_path / "twice.cbor.zst"
    path.write_bytes(
        with_index(base, set_path(index, ("columns", "frames", 0), frames_of_json * 3))
    )
    raw = wirecap("inspect", "--id", JSON_ID, "--raw", "response", path)
    assert_clean(raw)
    clean = tmp_path / "clean.cbor.zst"
    clean.write_bytes(base)
    with open_capture(clean) as capture:
        assert raw.stdout.encode("utf-8", "surrogateescape") == (
            capture.get(JSON_ID).response_bytes()
        )
    assert raw.stdout.count("HTTP/1.1 200 OK") == 1
    assert "not ascending and unique" in raw.stderr

    # 100,000 repeats: the row is refused as a whole, and the lookup decodes each frame at most once
    path.write_bytes(
        with_index(base, set_path(index, ("columns", "frames", 0), frames_of_json * 100_000))
    )
    assert path.stat().st_size < 8 * 1024
    frames_decoded.clear()
    with open_capture(path) as capture:
        exchange = capture.get(JSON_ID)
        assert exchange is not None and exchange.response_body.count(b"chatcmpl-abc") == 1
    assert len(frames_decoded) <= 2 * len(data_frames(base, offset))  # the header, then one scan


def test_a_row_with_one_wrongly_typed_field_is_scanned_for_and_reported(tmp_path, base):
    _, index = split_index(base)
    path = tmp_path / "typed.cbor.zst"
    path.write_bytes(with_index(base, set_path(index, ("columns", "status", 1), "200")))
    listed = wirecap("inspect", path)
    assert_clean(listed)
    assert SSE_ID in listed.stdout
    shown = wirecap("inspect", "--id", SSE_ID, path)
    assert_clean(shown)
    assert "data: [DONE]" in shown.stdout or "Hello" in shown.stdout
    assert f"index row of {SSE_ID} unusable ('status' is str" in shown.stderr
    indexed = wirecap("index", path)
    assert_clean(indexed)
    assert "already indexed" not in indexed.stdout and "index rows unusable" in indexed.stdout
    with CaptureFile(path) as repaired:
        assert repaired.index_from_file is False  # not read yet
        assert not repaired.index().bad_rows and repaired.index_from_file
    assert "already indexed" in wirecap("index", path).stdout


def test_an_index_holding_a_huge_array_costs_no_more_than_its_bytes(tmp_path, base):
    """400 million elements compress to 15 KB; the index is refused by its decompressed size,
    before anything is decoded, and the file is read by scanning."""
    _, index = split_index(base)
    path = tmp_path / "huge.cbor.zst"
    huge = b"\x9a" + (400_000_000).to_bytes(4, "big") + bytes(400_000_000)
    path.write_bytes(with_index(base, set_path(index, ("gaps",), "@huge"), {"@huge": huge}))
    assert path.stat().st_size < 32 * 1024
    shown = wirecap("inspect", "--id", SSE_ID, path, memory=64 * MiB)
    assert_clean(shown)
    assert "index unreadable (frame declares" in shown.stderr
    with open_capture(path) as capture:
        assert capture.get(SSE_ID) is not None


def test_frames_declaring_64_MiB_each_are_abandoned_at_their_first_bad_record(tmp_path, base):
    """200 frames of 64 MiB of zeros (420 KB): each is decompressed one window at a time and left
    at its first record, which is not a map."""
    offset, _ = split_index(base)
    path = tmp_path / "bombs.cbor.zst"
    path.write_bytes(base[:offset] + zeros_frame() * 200)
    assert path.stat().st_size < 512 * 1024
    spent: list[int] = []
    real = reader.read_frame_records

    def measuring(frame, info, budget):
        before = budget.spent
        try:
            return real(frame, info, budget)
        finally:
            spent.append(budget.spent - before)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "read_frame_records", measuring)
        with open_capture(path) as capture:
            assert {e.id for e in capture.exchanges()} == set(IDS)
            reasons = [d.reason for d in capture.damage]
    assert sum("record is not a map" in r for r in reasons) == 200
    assert max(spent) <= decoding.WINDOW + decoding.RECORD_COST  # a window for each bomb
    assert_clean(wirecap("inspect", path, memory=64 * MiB))


BOMB_ID = "bomb00000001"


@pytest.mark.parametrize(
    "event",
    [b"data: x\n\n", b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'],
    ids=["not-json", "chat-delta"],
)
def test_millions_of_tiny_events_cost_no_more_than_the_file_allows(tmp_path, event):
    """A 6 KB capture whose one answer is 30 MiB of tiny SSE events (up to 3.5 million): analysis
    parses the allowance of a file that size, says where it stopped, and every command stays
    within the memory bound (JSON problems past the first ten are counted, not kept)."""
    body = event * (30 * MiB // len(event))
    chunks = [body[i : i + MiB] for i in range(0, len(body), MiB)]
    spec = Spec(id=BOMB_ID, chunks=chunks, content_type="text/event-stream")
    path = trio.run(write_capture, tmp_path, [spec])
    size = path.stat().st_size
    assert size < 8 * 1024
    with open_capture(path) as capture:
        exchange = capture.get(BOMB_ID)
        assert exchange is not None
        facts = analyze_exchange(exchange).facts
    assert facts.analysis_stopped and "are not analyzed" in facts.analysis_stopped
    assert facts.events <= EventAllowance.for_stored(size).left + PIECE // len(event)
    for args in (("inspect",), ("inspect", "--id", BOMB_ID), ("stats",)):
        assert_clean(wirecap(*args, path, memory=64 * MiB))
    issues = wirecap("inspect", "--detect-issues", path, memory=64 * MiB)
    assert_clean(issues, status=1 if b"x\n" in event else 0)
    assert "analysis-stopped" in issues.stdout


def test_index_refuses_an_empty_file_and_writes_nothing(tmp_path):
    path = tmp_path / "empty.cbor.zst"
    path.write_bytes(b"")
    result = wirecap("index", path)
    assert_clean(result, status=1)
    assert "not a wirecap capture (no header record)" in result.stderr
    assert path.read_bytes() == b""
    assert_clean(wirecap("inspect", path))  # an empty file is an empty capture


def test_index_refuses_a_file_whose_first_frame_is_not_a_header(tmp_path, base):
    offset, _ = split_index(base)
    path = tmp_path / "headless.cbor.zst"
    headless = b"".join(data_frames(base, offset)[1:])
    path.write_bytes(headless)
    result = wirecap("index", path)
    assert_clean(result, status=1)
    assert path.read_bytes() == headless


# -- every index field, replaced by each other CBOR type ---------------------------------------------


def test_every_index_field_replaced_by_every_cbor_type(tmp_path, base, runner):
    _, index = split_index(base)
    index["damage"] = [{"offset": 0, "end": 1, "reason": "a damaged byte"}]
    rows = {IDS.index(SSE_ID), IDS.index(CUT_ID)}  # every field of the rows looked up
    paths = [p for p in index_paths(index) if p[0] != "columns" or len(p) < 3 or p[2] in rows]
    files, renamed = [], set()
    for n, path in enumerate(paths):
        for m, value in enumerate(CBOR_TYPES):
            file = tmp_path / f"field-{n}-{m}.cbor.zst"
            file.write_bytes(with_index(base, set_path(index, path, value)))
            files.append(file)
            if path[:2] == ("columns", "x") and isinstance(value, str):
                renamed.add(str(file))
    commands = [
        ["inspect", "--id", "{id}", "{file}"],
        ["api"],
        ["index", "{file}"],
        ["inspect", "--id", "{id}", "{file}"],
    ]
    reply = runner.run(files, commands, ids=[SSE_ID, CUT_ID], memory=MEMORY)
    assert failures(reply) == []
    # Every exchange is found whatever the index says, but for one plausible lie: a row that
    # names another exchange (any text is an id) says that this one has no records in the file.
    lookups = [
        r for r in reply["results"] if r["args"][0] == "inspect" and r["file"] not in renamed
    ]
    assert len(lookups) > 4 * len(CBOR_TYPES) and all(r["status"] == 0 for r in lookups)


@pytest.mark.parametrize("name", sorted(HUGE_CBOR))
def test_huge_and_declared_sizes_in_the_index(tmp_path, base, runner, name):
    _, index = split_index(base)
    files = []
    for n, path in enumerate([("gaps",), ("columns", "x"), ("columns", "frames", 1), ("extra",)]):
        file = tmp_path / f"huge-{n}.cbor.zst"
        file.write_bytes(
            with_index(base, set_path(index, path, "@huge"), {"@huge": HUGE_CBOR[name]})
        )
        files.append(file)
    assert failures(runner.run(files, memory=MEMORY)) == []


@pytest.mark.parametrize("name", sorted(FRAME_ATTACKS))
def test_hostile_frames(tmp_path, base, runner, name):
    offset, index = split_index(base)
    frames_in = data_frames(base, offset)
    attack = frame_attack(name)
    placed = {
        "after the header": b"".join([frames_in[0], attack, *frames_in[1:]]),
        "at the end": b"".join([*frames_in, attack]),
    }
    files = []
    for where, body in placed.items():
        for indexed in (False, True):
            file = tmp_path / f"{where.replace(' ', '-')}-{indexed}.cbor.zst"
            file.write_bytes(attach_index(body, index_bytes(index)) if indexed else body)
            files.append(file)
    commands = [
        ["inspect", "{file}"],
        ["inspect", "--detect-issues", "{file}"],
        ["inspect", "--id", "{id}", "--raw", "response", "{file}"],
        ["api"],
        ["index", "{file}"],
        ["inspect", "--id", "{id}", "{file}"],
    ]
    reply = runner.run(files, commands, ids=[SSE_ID, CUT_ID], memory=MEMORY + 8 * len(attack))
    assert failures(reply) == []


# -- properties: mutated real captures ---------------------------------------------------------------


@functools.cache
def real_capture() -> bytes:
    """The real capture the properties mutate (made once per test process)."""
    return write_real_capture(Path(tempfile.mkdtemp(prefix="wirecap-real-"))).read_bytes()


def index_paths_of(index: dict) -> list[tuple]:
    with_parts = dict(index, damage=[{"offset": 0, "end": 1, "reason": "x"}])
    return [p for p in index_paths(with_parts) if p[0] != "damage" or len(p) == 1]


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.text(max_size=16)
    | st.binary(max_size=16)
    | st.sampled_from(CBOR_TYPES),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclasses.dataclass(frozen=True)
class Mutation:
    """How a mutated capture differs from the real one (small, so a failure prints readably)."""

    order: tuple[int, ...]  # the data frames after the header, by position (repeats, drops)
    header_last: bool
    index_edit: tuple[tuple[Any, ...], Any] | None  # a path in the index and its new value
    keep_index: bool  # the index (now stale if frames moved) and footer, or none
    low: int  # where flips, junk and cuts may start: 0, or just past the header
    flips: tuple[tuple[int, int], ...]  # (position in [low, end), bit)
    junk: tuple[int, bytes] | None
    cut: int | None


@st.composite
def mutation_plans(draw: st.DrawFn) -> Mutation:
    offset, index = split_index(real_capture())
    header, *rest = data_frames(real_capture(), offset)
    size = len(real_capture()) * 2
    position = st.integers(0, size)
    return Mutation(
        order=tuple(
            draw(
                st.just(list(range(len(rest))))
                | st.lists(st.integers(0, len(rest) - 1), max_size=2 * len(rest))
                | st.permutations(range(len(rest)))
            )
        ),
        header_last=draw(st.integers(0, 9)) == 0,
        index_edit=draw(st.none() | st.tuples(st.sampled_from(index_paths_of(index)), cbor_values)),
        keep_index=draw(st.booleans()),
        low=0 if draw(st.integers(0, 4)) == 0 else len(header),
        flips=tuple(draw(st.lists(st.tuples(position, st.integers(0, 7)), max_size=6))),
        junk=draw(st.none() | st.tuples(position, st.binary(min_size=1, max_size=64))),
        cut=draw(st.none() | position),
    )


def mutate(base: bytes, plan: Mutation) -> bytes:
    offset, index = split_index(base)
    header, *rest = data_frames(base, offset)
    body = b"".join(rest[i] for i in plan.order)
    body = body + header if plan.header_last else header + body
    if plan.index_edit is not None:
        index = set_path(index, *plan.index_edit)
    data = bytearray(attach_index(body, index_bytes(index)) if plan.keep_index else body)
    span = max(len(data) - plan.low, 1)
    for at, bit in plan.flips:
        if plan.low + at % span < len(data):
            data[plan.low + at % span] ^= 1 << bit
    if plan.junk is not None:
        at = plan.low + plan.junk[0] % span
        data[at : at + len(plan.junk[1])] = plan.junk[1]
    if plan.cut is not None:
        del data[plan.low + plan.cut % span :]
    return bytes(data)


@settings(
    max_examples=int(os.environ.get("WIRECAP_HOSTILE_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=st.lists(mutation_plans(), min_size=8, max_size=8))
def test_mutated_captures_never_crash_any_command(tmp_path_factory, runner, plans):
    """Every command on eight mutated captures: no traceback, no status but 0 or 1, no child
    killed by its memory cap or hang guard; and where the index was not edited, every exchange
    ``inspect`` lists is found by ``inspect --id`` (through the index, or by scanning)."""
    directory = tmp_path_factory.mktemp("mutated")
    files, untouched = [], set()
    for n, plan in enumerate(plans):
        file = directory / f"mutated-{n}.cbor.zst"
        file.write_bytes(mutate(real_capture(), plan))
        files.append(file)
        if plan.index_edit is None:
            untouched.add(str(file))
    reply = runner.run(files, memory=MEMORY)
    assert failures(reply) + unfound(reply, untouched) == []


def unfound(reply: dict, files: set[str]) -> list[str]:
    """Exchanges of ``files`` that ``inspect --json`` lists and ``inspect --id`` does not find
    (before ``index`` rewrites the file)."""
    listed: dict[str, set[str]] = {}
    found: dict[str, set[str]] = {}
    indexed: set[str] = set()
    for result in reply["results"]:
        args, file = result["args"], result["file"]
        if file not in files or file in indexed:
            continue
        if args[0] == "index":
            indexed.add(file)
        elif args[:2] == ["inspect", "--json"] and result["status"] == 0:
            listed[file] = {json.loads(line)["id"] for line in result["stdout"].splitlines()}
        elif args[:2] == ["inspect", "--id"] and len(args) == 4 and result["status"] == 0:
            found.setdefault(file, set()).add(args[2])
    return [
        f"{file}: {sorted(ids - found.get(file, set()))} listed, not found"
        for file, ids in listed.items()
        if ids - found.get(file, set())
    ]
