"""Counts in words. Sans-IO."""

from __future__ import annotations


def plural(n: int, noun: str) -> str:
    """``1 error``, ``2 errors``, ``0 errors`` (the nouns wirecap counts take an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
