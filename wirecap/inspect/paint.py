"""Colour in the text views, by role: a view says what a piece of text is (a 5xx status, an error,
a PASS), and the caller's painter says how that looks. Sans-IO; the default painter adds nothing.

Roles: ``status-1xx`` ... ``status-5xx`` and ``status-none``, ``error``, ``warning``, ``info``,
``pass``, ``fail``, ``muted``. The command line paints on a terminal only, and never with
``NO_COLOR`` set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

#: ``paint(text, role) -> text``: what the views call around each coloured piece.
Paint = Callable[[str, str], str]

ROLES: Final = (
    "status-1xx",
    "status-2xx",
    "status-3xx",
    "status-4xx",
    "status-5xx",
    "status-none",
    "error",
    "warning",
    "info",
    "pass",
    "fail",
    "muted",
)


def plain(text: str, role: str) -> str:
    """The painter that adds nothing (piped output, ``NO_COLOR``, tests)."""
    return text


def status_role(status: int | None) -> str:
    """``status-2xx`` for 204; ``status-none`` when there was no answer."""
    if status is None or not 100 <= status <= 599:
        return "status-none"
    return f"status-{status // 100}xx"
