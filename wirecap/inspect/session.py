"""A WebSocket session as text: one line per message (time, direction, opcode, text or size)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from wirecap.inspect.words import plural

if TYPE_CHECKING:
    from collections.abc import Iterator

    from wirecap.llm.websocket import WsMessage, WsSession

#: A session longer than this is summarised (unless --full): its first and last messages.
SESSION_SUMMARY_OVER: Final = 60
SESSION_FIRST: Final = 40
SESSION_LAST: Final = 10
#: Characters of a text message shown on its line.
MESSAGE_CHARACTERS: Final = 160
#: Who sent a message, by direction.
ARROWS: Final = {"req": "client >", "res": "< server"}


def message_line(message: WsMessage, previous_ns: int) -> str:
    """``  12.345 ms  +  0.120  client >  text     41 B  {"type": ...}``"""
    gap = (message.ns - previous_ns) / 1e6
    start = (
        f"{message.ns / 1e6:10.3f} ms  +{gap:8.3f}  {ARROWS.get(message.dir, message.dir):8}  "
        f"{message.opcode:<6} {message.size:7d} B"
    )
    if message.opcode == "close":
        reason = message.data.decode("utf-8", "replace")
        return f"{start}  code {message.close_code}" + (f" {reason!r}" if reason else "")
    if message.text is None:
        return start
    text = message.text.replace("\r", " ").replace("\n", " ")
    if len(text) > MESSAGE_CHARACTERS:
        text = text[:MESSAGE_CHARACTERS] + "..."
    return f"{start}  {text}"


def session_lines(session: WsSession, *, full: bool = False) -> Iterator[str]:
    """The session's messages in arrival order; past :data:`SESSION_SUMMARY_OVER` (unless
    ``full``) the first :data:`SESSION_FIRST` and the last :data:`SESSION_LAST`."""
    messages = session.messages
    count = len(messages)
    sent = sum(1 for m in messages if m.dir == "req")
    yield (
        f"--- websocket session ({plural(count, 'message')}: {sent} from the client, "
        f"{count - sent} from the server; extensions {session.extensions or 'none'})"
    )
    shown = range(count)
    if not full and count > SESSION_SUMMARY_OVER:
        shown = range(SESSION_FIRST)
    previous = 0
    for i in shown:
        yield message_line(messages[i], previous)
        previous = messages[i].ns
    if len(shown) < count:
        hidden = count - SESSION_FIRST - SESSION_LAST
        yield f"   ... {plural(hidden, 'message')} not shown (--full for all) ..."
        previous = messages[count - SESSION_LAST - 1].ns
        for message in messages[count - SESSION_LAST :]:
            yield message_line(message, previous)
            previous = message.ns
    for problem in session.problems.values():
        yield f"(could not decode: {problem})"
    if not any(m.opcode == "close" for m in messages):
        yield "(no Close frame: the connection ended without the closing handshake)"
