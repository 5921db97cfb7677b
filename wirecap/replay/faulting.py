"""The mock server's side of fault injection: carrying out what :mod:`wirecap.faults` decides.

A request the fault plan picks gets, by the fault's mode:

- ``answer`` (429, 500, 503): the provider-shaped error answer at once; no recorded answer is used
  up, so a client's retry gets the recording.
- ``silence`` (timeout): nothing, until the client closes the connection.
- ``body`` (the stream kinds): the recorded answer, transformed as it is sent. ``bad-tool-args``
  and ``length`` need something to rewrite: where the recorded answer has no tool call (or no
  finish reason), or the capture holds no answer for the request at all, the mock **synthesizes**
  a provider-shaped answer that carries the fault (streamed if the request asked for a stream)
  instead of failing. The other stream kinds need a recorded answer: a request the capture does
  not hold is a miss, as without a fault.

Fault pauses (``ms=``) are real time, whatever ``--timing`` says about the recorded gaps.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import h11
import trio

from wirecap.faults import BodyFault, Cut, Pause, Send, error_answer, synthesized_answer
from wirecap.faults.rewrite import REWRITERS
from wirecap.llm import parse_head
from wirecap.proxy.messages import HOP_BY_HOP
from wirecap.replay.catalog import Miss

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from wirecap.faults import Answer, FaultSpec, Step
    from wirecap.replay.catalog import Recorded
    from wirecap.replay.serve import MockServer

#: Headers a transformed answer does not keep: it is re-framed by h11.
_REFRAMED = HOP_BY_HOP | {b"content-length", b"transfer-encoding"}


class InjectedTimeout(trio.ClosedResourceError):
    """The client gave up waiting for an answer a ``timeout`` fault never sends."""


class AnswerCut(trio.ClosedResourceError):
    """The answer was cut off mid-body (a ``disconnect`` fault, or a recording that broke off):
    the connection closes without the message's end."""


async def answer_with_fault(
    server: MockServer,
    conn: h11.Connection,
    stream: trio.abc.Stream,
    request: h11.Request,
    body: bytes,
    arrived_ns: int,
    fault: FaultSpec,
    *,
    noted: Callable[[Mapping[str, Any]], object] | None = None,
) -> bool:
    """Answer ``request`` under ``fault``; False when it is left to the normal path (a miss).

    ``noted`` gets the fault's note detail (what ``on_answer`` gets as :attr:`Served.fault`)
    before the first byte of the answer. Raises :class:`InjectedTimeout` when the client gives up
    on a ``timeout`` fault, :class:`AnswerCut` when the answer is cut off mid-body.
    """
    target = request.target.decode("latin-1")

    def tell(recording: str | None, status: int, note: Mapping[str, Any]) -> None:
        server.tell_fault(arrived_ns, request, recording, status, note)
        if noted is not None:
            noted(note)

    note = fault.note()
    head_only = request.method == b"HEAD"  # the answer to a HEAD is its head alone
    if fault.mode == "answer":
        answer = error_answer(fault, target)
        tell(None, answer.status, note)
        await send_answer(conn, stream, answer, head_only=head_only)
        return True
    if fault.mode == "silence":
        tell(None, 0, note)
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):  # never answers; ends when the client gives up
                pass
        raise InjectedTimeout("injected timeout: no answer; the client gave up")
    found = server.catalog.lookup(request.method.decode(), target, body)
    rewrite = fault.kind in REWRITERS
    if isinstance(found, Miss) and not rewrite:
        return False
    planned = None if isinstance(found, Miss) else _plan(found, fault, target)
    if planned is None:
        answer = synthesized_answer(fault, target, body)
        tell(None, answer.status, {**note, "synthesized": True})
        await send_answer(conn, stream, answer, head_only=head_only)
        return True
    recorded, headers, chunks, closing = planned
    server.served.append(recorded.id)
    tell(recorded.id, recorded.status, note)
    await server._wait(recorded.head_delay_ns)
    await _write(stream, conn.send(h11.Response(status_code=recorded.status, headers=headers)))
    if not head_only:
        for delay, steps in chunks:
            await server._wait(delay)
            await _carry_out(conn, stream, steps)
        await _carry_out(conn, stream, closing)
        if recorded.cut:
            raise AnswerCut("recorded response was cut off")
    await _write(stream, conn.send(h11.EndOfMessage()))
    return True


Planned = tuple["Recorded", list[tuple[bytes, bytes]], Any, list["Step"]]


def _plan(recorded: Recorded, fault: FaultSpec, target: str) -> Planned | None:
    """The recorded answer's head and its chunks' steps under ``fault``; None when a rewrite
    finds nothing to rewrite (the caller synthesizes an answer)."""
    head = parse_head(recorded.head)
    values = {k.lower(): v for k, v in head.headers}
    transform = BodyFault(
        fault,
        target=target,
        content_type=values.get("content-type", ""),
        content_encoding=values.get("content-encoding"),
    )
    drop = _REFRAMED | ({b"content-encoding"} if transform.decoded else set())
    headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in head.headers
        if k.lower().encode("latin-1") not in drop
    ]
    headers.append((b"X-Wirecap-Fault", fault.kind.encode()))
    if fault.kind not in REWRITERS:  # steps made as the chunks go: a big answer is not held
        return recorded, headers, _lazy(recorded, transform), []
    chunks = [(delay, transform.feed(chunk)) for delay, chunk in recorded.chunks]
    closing = transform.close()
    return (recorded, headers, chunks, closing) if transform.applied else None


class _lazy:
    """The recorded chunks' steps, made as they are iterated; the closing steps come last."""

    def __init__(self, recorded: Recorded, transform: BodyFault) -> None:
        self.recorded, self.transform = recorded, transform

    def __iter__(self) -> Any:
        for delay, chunk in self.recorded.chunks:
            yield delay, self.transform.feed(chunk)
        yield 0, self.transform.close()


async def _carry_out(conn: h11.Connection, stream: trio.abc.Stream, steps: list[Step]) -> None:
    for step in steps:
        if isinstance(step, Send):
            if step.data and conn.our_state is h11.SEND_BODY:
                await _write(stream, conn.send(h11.Data(data=step.data)))
        elif isinstance(step, Pause):
            await trio.sleep(step.seconds)
        elif isinstance(step, Cut):
            raise AnswerCut(step.reason)


async def send_answer(
    conn: h11.Connection, stream: trio.abc.Stream, answer: Answer, *, head_only: bool = False
) -> None:
    """Send ``answer`` whole; with ``head_only`` (the request was a HEAD) its head alone, whose
    Content-Length still says how long the body is."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    headers.append((b"Content-Length", str(len(answer.body)).encode()))
    await _write(stream, conn.send(h11.Response(status_code=answer.status, headers=headers)))
    if not head_only:
        await _write(stream, conn.send(h11.Data(data=answer.body)))
    await _write(stream, conn.send(h11.EndOfMessage()))


async def _write(stream: trio.abc.Stream, data: bytes | None) -> None:
    if data:
        await stream.send_all(data)
