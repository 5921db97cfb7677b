"""The writer process's fast lane: packed records encoded, redacted and indexed without being built,
with the same bytes and the same index as the record path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirecap.capture import packing
from wirecap.capture.index import IndexBuilder, index_item
from wirecap.capture.packing import encode_packed, encode_packed_split, pack_record, unpack_record
from wirecap.capture.records import (
    OUTCOMES,
    BodyChunk,
    ExchangeEnd,
    Gap,
    Redaction,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.capture.ring import BodyRing
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.proxy.redact import Redactor, Rules, redact_head, redact_patterns, redact_text

# Integers around every CBOR head size, and beyond 64 bits (cbor2 then decides: a bignum tag).
ints = st.one_of(
    st.integers(min_value=0, max_value=30),
    st.sampled_from([23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
texts = st.text(max_size=300)  # lengths across the 1- and 2-byte length heads, any code point
opt_texts = st.none() | texts
blobs = st.binary(max_size=300)
redactions = st.lists(
    st.builds(Redaction, where=st.sampled_from(["head", "body"]), name=texts, fingerprint=texts),
    max_size=2,
).map(tuple)

records = st.one_of(
    st.builds(
        RequestReceived,
        x=texts,
        wall_ns=ints,
        method=texts,
        target=texts,
        head=blobs,
        client=texts,
        proxy_url=texts,
        route=opt_texts,
        upstream_url=opt_texts,
    ),
    st.builds(
        UpstreamRequest,
        x=texts,
        ns=ints,
        head=blobs,
        proxy_path=st.sampled_from(["added", "forwarded"]),
    ),
    st.builds(ResponseHead, x=texts, ns=ints, status=ints, head=blobs, by=texts),
    st.builds(
        BodyChunk,
        x=texts,
        dir=st.sampled_from(["req", "res"]),
        ns=ints,
        data=blobs | blobs.map(bytearray),
    ),
    st.builds(
        ExchangeEnd,
        x=texts,
        ns=ints,
        outcome=st.sampled_from(sorted(OUTCOMES)),
        status=st.none() | ints,
        error=opt_texts,
        req_bytes=ints,
        res_bytes=ints,
        ttfb_ns=st.none() | ints,
    ),
    st.builds(
        Gap,
        wall_ns=ints,
        records=ints,
        bytes=ints,
        exchanges=st.lists(texts, max_size=3).map(tuple),
        reason=texts,
    ),
)


def test_type_codes_follow_the_field_table():
    kinds = list(packing.RECORD_FIELDS)
    codes = (packing.REQUEST, packing.UPSTREAM, packing.RESPONSE, packing.BODY, packing.END)
    expected = (RequestReceived, UpstreamRequest, ResponseHead, BodyChunk, ExchangeEnd)
    assert [kinds[code] for code in (*codes, packing.GAP)] == [*expected, Gap]


PACKED_BUILDERS = {
    RequestReceived: packing.packed_request,
    UpstreamRequest: packing.packed_upstream,
    ResponseHead: packing.packed_response,
    BodyChunk: packing.packed_body,
    ExchangeEnd: packing.packed_end,
}


@settings(max_examples=200, deadline=None)
@given(records.filter(lambda record: type(record) in PACKED_BUILDERS))
def test_the_proxys_packed_builders_pack_what_pack_record_packs(record):
    fields = {name: getattr(record, name) for name in packing.RECORD_FIELDS[type(record)]}
    packed = PACKED_BUILDERS[type(record)](**fields)
    assert packed == pack_record(record)
    assert packing.packed_size(packed) == packing.pack_sized(record)[1]
    assert unpack_record(packed) == record


@settings(max_examples=100, deadline=None)
@given(records)
def test_a_packed_record_names_the_exchange_its_record_names(record):
    assert packing.packed_exchange(pack_record(record)) == getattr(record, "x", None)


@settings(max_examples=400, deadline=None)
@given(records, redactions)
def test_a_packed_record_encodes_to_the_bytes_cbor2_makes_of_its_map(record, found):
    if found and not isinstance(record, ExchangeEnd | Gap):
        record.redactions = found
    else:
        found = ()
    packed = pack_record(record)
    try:
        expected = cbor2.dumps(record.to_map())
    except UnicodeEncodeError:  # a lone surrogate (the test below)
        with pytest.raises(UnicodeEncodeError):
            encode_packed(packed, found)
        return
    assert encode_packed(packed, found) == expected
    assert b"".join(encode_packed_split(packed, found)) == expected


@pytest.mark.parametrize("size", [packing.BIG_BODY_BYTES - 1, packing.BIG_BODY_BYTES, 70_000])
def test_a_big_body_is_split_from_its_record_without_a_copy(size):
    data = bytearray(b"d" * size)
    packed = pack_record(BodyChunk(x="a", dir="res", ns=1, data=data))
    head, tail = encode_packed_split(packed)
    assert head + tail == encode_packed(packed)
    assert (tail is data) == (size >= packing.BIG_BODY_BYTES)


def test_encoded_strings_are_remembered_within_a_bound():
    """Exchange ids repeat in each record of their exchange, then never again: the cache of encoded
    strings stays bounded, and a string encodes the same whether remembered or not."""
    ends = [ExchangeEnd(x=f"{n:012x}", ns=n, outcome="ok") for n in range(3 * packing._TEXTS_MAX)]
    for end in ends:
        expected = cbor2.dumps(end.to_map())
        assert encode_packed(pack_record(end)) == expected  # first: encoded
        assert encode_packed(pack_record(end)) == expected  # again: remembered
        assert len(packing._TEXTS) <= packing._TEXTS_MAX
    long_target = "/" + "t" * packing._TEXT_CACHED_LENGTH
    encode_packed(
        pack_record(RequestReceived(x="a", wall_ns=1, method="GET", target=long_target, head=b""))
    )
    assert long_target not in packing._TEXTS


def test_a_lone_surrogate_fails_as_cbor2_fails():
    record = BodyChunk(x="\ud800", dir="req", ns=1, data=b"")
    with pytest.raises(UnicodeEncodeError):
        cbor2.dumps(record.to_map())
    with pytest.raises(UnicodeEncodeError):
        encode_packed(pack_record(record))


KEY = "sk-proj-" + "a1B2c3D4" * 4
RULES = Rules.compile(["authorization", "x-api-key"], [r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}"])
ROUTE_RULES = {"/other/": RULES.merged(["x-other-key"], [r"tok_[0-9]{6}"])}

heads = st.lists(
    st.sampled_from(
        [
            b"Authorization: Bearer " + KEY.encode(),
            b"x-api-key: " + KEY.encode(),
            b"X-Other-Key: hunter2",
            b"X-Note: tok_123456",
            b"X-Debug: " + KEY.encode(),  # a key where no credential header is: a body pattern
            b"Content-Type: application/json",
            b"X-Model: gpt-4o-mini",
            b"Authorization: ",
        ]
    ),
    max_size=4,
).map(lambda lines: b"POST /v1 HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n")
bodies = st.sampled_from(
    [
        b'{"model": "gpt-4o-mini", "messages": []}',
        b'{"key": "' + KEY.encode() + b'"}',
        b"tok_654321 and more",
        b"QUJDREVGR0g=" * 10,
        b"",
        b"QUJDREVGR0g=" * 400,  # big enough to be searched alone (redact.JOINED_BODY_BYTES)
        b"QUJDREVGR0g=" * 400 + KEY.encode(),
    ]
)
targets = st.sampled_from(["/v1/chat", f"/v1/chat?key={KEY}", "/other/v1?t=tok_000111"])


@st.composite
def exchanges(draw: st.DrawFn, x: str) -> list[object]:
    target = draw(targets)
    route = draw(st.sampled_from([None, "/other/"]))
    return [
        RequestReceived(
            x=x,
            wall_ns=1,
            method="POST",
            target=target,
            head=draw(heads),
            client="127.0.0.1:1",
            proxy_url="http://127.0.0.1:8080" + target,
            route=route,
            upstream_url="http://127.0.0.1:9" + target,
        ),
        UpstreamRequest(x=x, ns=2, head=draw(heads)),
        BodyChunk(x=x, dir="req", ns=3, data=draw(bodies)),
        ResponseHead(x=x, ns=4, status=200, head=draw(heads).replace(b"POST /v1", b"HTTP/1.1 200")),
        BodyChunk(x=x, dir="res", ns=5, data=draw(bodies)),
        ExchangeEnd(x=x, ns=6, outcome="ok", status=200, req_bytes=1, res_bytes=2),
    ]


def reference(record: object, rules: Rules) -> object:
    """What redaction means, record by record, from the module's primitives."""
    if isinstance(record, RequestReceived):
        head, found = redact_head(record.head, rules)
        return dataclasses.replace(
            record,
            head=head,
            target=redact_text(record.target, rules),
            proxy_url=redact_text(record.proxy_url, rules),
            upstream_url=redact_text(record.upstream_url, rules),
            redactions=tuple(found),
        )
    if isinstance(record, UpstreamRequest | ResponseHead):
        head, found = redact_head(record.head, rules)
        return dataclasses.replace(record, head=head, redactions=tuple(found))
    if isinstance(record, BodyChunk):
        data, found = redact_patterns(record.data, rules, "body")
        return dataclasses.replace(record, data=data, redactions=tuple(found))
    return record


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).flatmap(
        lambda ids: st.tuples(*(exchanges(f"{x}{i}") for i, x in enumerate(ids)))
    ),
    st.lists(st.integers(min_value=1, max_value=8), min_size=1),
)
@pytest.mark.parametrize("route_rules", [ROUTE_RULES, {}], ids=["route rules", "alike"])
def test_batches_of_packed_records_store_what_redacting_each_record_means(
    route_rules, groups, sizes
):
    """With a route of its own rules (each record's rules looked up) and without (every record
    alike: Redactor._redact_batch_alike)."""
    interleaved = [record for step in zip(*groups, strict=True) for record in step]
    routes = {r.x: r.route for r in interleaved if isinstance(r, RequestReceived)}
    expected = [
        reference(r, route_rules["/other/"] if routes[r.x] in route_rules else RULES)
        for r in interleaved
    ]
    sink = SegmentSink(
        Path("unused"), SegmentHeader(redaction={}), prepare=Redactor(RULES, route_rules)
    )
    by_record = Redactor(RULES, route_rules)
    packed = [pack_record(r) for r in interleaved]
    encoded = []
    at = 0
    while at < len(packed):  # batches of the drawn sizes, as the writer process reads them
        size = sizes[len(encoded) % len(sizes)]
        encoded += sink.encode_batch(packed[at : at + size])
        at += size
    index_by_reference, index_by_batch = IndexBuilder(), IndexBuilder()
    for at, (record, want, (item, head, data)) in enumerate(
        zip(interleaved, expected, encoded, strict=True)
    ):
        assert head + data == cbor2.dumps(want.to_map())
        assert KEY.encode() not in head + data
        assert by_record(record) == want  # the in-process writer's hook, record by record
        index_by_reference.observe_all([index_item(want)], at // 7)
        index_by_batch.observe_all([item], at // 7)
    assert index_by_batch.build().to_map() == index_by_reference.build().to_map()
    assert not sink._prepare._exchange_rules  # every exchange's state is gone with its end


def test_a_key_in_every_request_head_keeps_the_batch_on_the_quick_way():
    """Clients send their key with every request: the credential lines are replaced before the
    body patterns are searched, so the key found there sends no batch the careful way."""
    head = b"POST /v1 HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n"
    records = [
        RequestReceived(x="a", wall_ns=1, method="POST", target="/v1", head=head),
        UpstreamRequest(x="a", ns=2, head=head),
        BodyChunk(x="a", dir="req", ns=3, data=b'{"model": "gpt-4o-mini"}'),
    ]
    done = Redactor(RULES)._redact_batch_alike([pack_record(r) for r in records])
    assert done is not None
    assert [d if isinstance(d, BodyChunk) else unpack_record(d[0]) for d in done] == [
        dataclasses.replace(reference(r, RULES), redactions=()) for r in records
    ]
    assert [len(d[1]) for d in done if isinstance(d, tuple)] == [1, 1, 0]


@pytest.mark.parametrize(
    "pattern",
    [rb"^tok_[0-9]{6}", rb"(?<![a-z])tok_[0-9]{6}", rb"\btok_[0-9]{6}\b", rb"tok_[0-9]{6}$"],
)
def test_patterns_that_look_around_their_match_are_searched_record_by_record(pattern):
    rules = Rules.compile(["authorization"], [pattern.decode()])
    assert not rules.joinable
    bodies = [b"xtok_000000", b"tok_123456", b"abc", b"tok_654321"]
    batch = [pack_record(BodyChunk(x="a", dir="res", ns=i, data=d)) for i, d in enumerate(bodies)]
    done = Redactor(rules).redact_batch(batch)
    want = [reference(unpack_record(p), rules) for p in batch]
    got = [d if isinstance(d, BodyChunk) else unpack_record(d[0]) for d in done]
    assert [g.data for g in got] == [w.data for w in want]
    assert sum(b"tok_" in g.data for g in got) < len(bodies) - 1  # some were redacted


#: A big body chunk's worth of base64 (the writer process finds such chunks in the shared ring).
BIG = b"QUJDREVGR0g=" * 2000


@pytest.mark.parametrize("hook", ["redactor", "record hook", "none"])
@pytest.mark.parametrize(
    "data",
    [BIG, b"-" + BIG, BIG + KEY.encode(), b'{"id": "chatcmpl-1", "n": 1},' * 800],
    ids=["base64", "prefilter byte", "key", "json"],
)
def test_a_body_chunk_in_the_ring_is_stored_as_its_bytes_would_be(data, hook):
    """A chunk left where it lies in the ring is redacted and encoded as the same bytes would be,
    and copied out only to be redacted (or for a hook that only knows records)."""
    ring = BodyRing.create(len(data) + 64)
    assert ring is not None
    at = ring.put(data)
    assert at is not None
    in_ring = ring.chunk(at, len(data))
    prepare = {"redactor": Redactor(RULES), "record hook": Redactor(RULES).__call__, "none": None}
    sink = SegmentSink(Path("unused"), SegmentHeader(redaction={}), prepare=prepare[hook])
    ((item, head, tail),) = sink.encode_batch([(packing.BODY, ("a", "res", 5, in_ring))])
    record = BodyChunk(x="a", dir="res", ns=5, data=data)
    want = record if hook == "none" else reference(record, RULES)
    assert head + bytes(tail) == cbor2.dumps(want.to_map())
    assert item == "a"
    left_in_ring = hook == "none" or (hook == "redactor" and KEY.encode() not in data)
    assert (tail is in_ring) == left_in_ring
    ring.close()
