"""Text search over prompts and answers, kept out of memory.

Each finished exchange's searchable text (its path, the request's messages, the answer, tool calls
and thinking; lower-cased, at most :data:`TEXT_BYTES`) is appended to an unnamed temporary file
(mode 0600, gone when the inspector exits). A search maps that file and lets ``find`` run over it
at C speed, so memory holds only one offset per exchange however long the prompts are. Exchanges
still being written keep their text in memory until they end.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import tempfile
import threading
from typing import Final

#: Searchable bytes kept per exchange: long system prompts are searched in their first part.
TEXT_BYTES: Final = 64 * 1024
#: Separates two exchanges' texts in the file: a query never holds it, so no hit spans two.
SEPARATOR: Final = b"\x00"


def normalize(text: str) -> bytes:
    """What is stored and searched: lower-cased UTF-8, without the separator."""
    return text.lower().replace("\x00", " ").encode("utf-8", "replace")[:TEXT_BYTES]


class SearchText:
    """Searchable text per exchange id. :meth:`add` from one thread; :meth:`search` from any."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="wirecap-ui-")  # noqa: SIM115 (closed by close())
        self._size = 0
        self._starts: list[int] = []  # offset of each stored text, ascending
        self._ids: list[str] = []  # the exchange of each stored text
        self._live: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._file.close()

    def set_live(self, exchange_id: str, text: str) -> None:
        """The text so far of an exchange still being written."""
        with self._lock:
            self._live[exchange_id] = normalize(text)

    def add(self, exchange_id: str, text: str) -> None:
        """The final text of an exchange that ended."""
        data = normalize(text) + SEPARATOR
        os.pwrite(self._file.fileno(), data, self._size)
        with self._lock:
            self._live.pop(exchange_id, None)
            self._starts.append(self._size)
            self._ids.append(exchange_id)
            self._size += len(data)

    @property
    def stored_bytes(self) -> int:
        return self._size

    def search(self, words: list[str]) -> set[str]:
        """Ids of the exchanges whose text holds every one of ``words`` (case-insensitive)."""
        needles = [normalize(w) for w in words if w.strip()]
        if not needles:
            return set()
        with self._lock:
            size, starts, ids = self._size, list(self._starts), list(self._ids)
            live = dict(self._live)
        found: set[str] | None = None
        for needle in needles:
            hits = {x for x, text in live.items() if needle in text}
            hits |= self._stored_hits(needle, size, starts, ids)
            found = hits if found is None else found & hits
            if not found:
                break
        return found or set()

    def _stored_hits(self, needle: bytes, size: int, starts: list[int], ids: list[str]) -> set[str]:
        hits: set[str] = set()
        if not size:
            return hits
        with contextlib.closing(
            mmap.mmap(self._file.fileno(), size, access=mmap.ACCESS_READ)
        ) as view:
            at = view.find(needle)
            while at != -1:
                i = bisect.bisect_right(starts, at) - 1
                hits.add(ids[i])
                # the next text starts after this one's separator
                end = starts[i + 1] if i + 1 < len(starts) else size
                at = view.find(needle, end)
        return hits
