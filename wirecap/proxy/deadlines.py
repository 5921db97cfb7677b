"""When waits give up: one table of deadlines, checked by one task, instead of a cancel scope per wait. Sans-IO.

A trio cancel scope with a deadline costs about 10 us to enter and leave, and moving its deadline
about 5 us more (the run loop keeps a heap of deadlines): on the relay's hot path that was two
scopes and one or two moves per exchange, some 25 us of a 160 us budget. Here a wait stores its
deadline in a dict (0.1 us) and clears it when it returns; the proxy's watchdog task calls
:meth:`Deadlines.expire` when the earliest deadline may have passed. An item that expires gets its
``expire()`` called, which closes the socket its wait is parked on: the waiting task wakes with
``ClosedResourceError`` and reads in the item's flags why. Every wait handled this way ends its
connection when it times out (an idle keep-alive connection, an upstream that went silent), so
closing the socket loses nothing that the timeout would not have lost.

The earliest deadline is cached in :attr:`Deadlines.next_due` and only lowered by :meth:`set`; a
cleared or postponed deadline leaves it early, which costs one needless scan, never a missed one.
"""

from __future__ import annotations

import math
from typing import Protocol


class Expirable(Protocol):
    def expire(self) -> None:
        """The item's deadline passed: make its wait end."""
        ...


class Deadlines:
    """Items with a deadline (trio.current_time() seconds), at most one each."""

    __slots__ = ("_due", "next_due")

    def __init__(self) -> None:
        self._due: dict[Expirable, float] = {}
        #: No deadline is earlier than this (it may be earlier than any deadline left).
        self.next_due = math.inf

    def __len__(self) -> int:
        return len(self._due)

    def set(self, item: Expirable, deadline: float) -> bool:
        """Give ``item`` this deadline (replacing any). True when it is the new earliest, so that
        whoever checks must be woken to check sooner."""
        self._due[item] = deadline
        if deadline < self.next_due:
            self.next_due = deadline
            return True
        return False

    def clear(self, item: Expirable) -> None:
        """``item``'s wait is over: no deadline."""
        self._due.pop(item, None)

    def expire(self, now: float) -> None:
        """Call ``expire()`` on (and forget) every item whose deadline is ``now`` or earlier."""
        if now < self.next_due:
            return
        expired = [item for item, deadline in self._due.items() if deadline <= now]
        for item in expired:
            del self._due[item]
        self.next_due = min(self._due.values(), default=math.inf)
        for item in expired:
            item.expire()
