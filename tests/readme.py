"""The README's runnable snippets: a fenced block right after a ``<!-- run: KIND -->`` line, where
KIND is ``sh`` (run with bash, stopping at the first failing command), ``python`` (run with the
interpreter) or ``pytest`` (saved as a test module and run with pytest)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
_BLOCK = re.compile(
    r"^<!-- run: (sh|python|pytest) -->\n```[a-z]*\n(.*?)^```$", re.DOTALL | re.MULTILINE
)


@dataclasses.dataclass(frozen=True)
class Snippet:
    kind: str
    code: str
    line: int  # where the block starts in the README

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.kind})"


def snippets(text: str | None = None) -> list[Snippet]:
    text = README.read_text(encoding="utf-8") if text is None else text
    return [
        Snippet(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 2)
        for m in _BLOCK.finditer(text)
    ]
