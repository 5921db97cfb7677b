"""``wirecap import``: other tools' files made into one new capture segment.

Each file's format is told by its content (or forced); every file is recognised before anything is
written, and a file that fails while being read removes the segment written so far, so an import
either writes all it says or nothing. Entries that cannot be imported (a request that got no
response, a WebSocket flow) are skipped and counted with the reason.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import re
from typing import TYPE_CHECKING, Final

from wirecap.interop.build import EntryError, Imported, Skipped
from wirecap.interop.export import plural
from wirecap.interop.har import HarError, har_entries, har_exchanges
from wirecap.interop.mitm import flow_exchanges
from wirecap.interop.sink import ImportSink
from wirecap.interop.vcr import CassetteError, interactions, load_cassette, vcr_exchanges

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from wirecap.capture.redact import Redactor

    Reader = Callable[[Path], Iterator[Imported | Skipped]]

FORMATS: Final = ("har", "vcr", "mitmproxy")
#: Bytes of a file's start looked at to tell its format.
SNIFF_BYTES: Final = 64 * 1024
_TNETSTRING_START: Final = re.compile(rb"^\d{1,12}:")
_BOM: Final = b"\xef\xbb\xbf"


class ImportFailed(Exception):
    """A file that cannot be imported; the message is one line and names the file."""


@dataclasses.dataclass(slots=True)
class FileReport:
    """What one file gave: exchanges imported and entries skipped, by reason."""

    path: Path
    format: str
    imported: int = 0
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass(slots=True)
class ImportReport:
    files: list[FileReport]
    written: list[Path]  # the capture segments written (none when nothing was imported)

    @property
    def exchanges(self) -> int:
        return sum(f.imported for f in self.files)


def detect_format(path: Path, start: bytes) -> str:
    """The format of ``path``, told by ``start`` (its first bytes); raises :class:`ImportFailed`."""
    text = start.removeprefix(_BOM).lstrip()
    if _is_tnetstring_dict(path, start):
        return "mitmproxy"
    if text[:1] == b"{":
        if re.search(rb'"log"\s*:', text) and b'"entries"' in text:
            return "har"
        if re.search(rb'"(http_)?interactions"\s*:', text):
            return "vcr"
    elif re.search(rb"(?m)^(http_)?interactions:", text):
        return "vcr"
    raise ImportFailed(
        f"{path}: not a HAR file, VCR cassette or mitmproxy flow file "
        "(--format says which it is, if it is one)"
    )


def _is_tnetstring_dict(path: Path, start: bytes) -> bool:
    """Whether ``path`` starts with a tnetstring dict (a flow): a length, a colon, a first item,
    and at the end of that length the dict's type character."""
    head = _TNETSTRING_START.match(start)
    if head is None or not _TNETSTRING_START.match(start[head.end() :]):
        return False
    end = head.end() + int(start[: head.end() - 1])
    try:
        with path.open("rb") as file:
            file.seek(end)
            return file.read(1) == b"}"
    except OSError:
        return False


def _read_vcr(path: Path) -> Iterator[Imported | Skipped]:
    document = load_cassette(path.read_bytes())
    if interactions(document) is None:
        raise CassetteError("no 'interactions' list: not a VCR cassette")
    return vcr_exchanges(document, str(path), path.stat().st_mtime_ns)


def _read_har(path: Path) -> Iterator[Imported | Skipped]:
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HarError(f"not a readable HAR (JSON) file: {exc}") from None
    har_entries(document)  # raises now, before anything is read, if it is not HAR
    return har_exchanges(document, str(path))


def _read_mitmproxy(path: Path) -> Iterator[Imported | Skipped]:
    with path.open("rb") as file:
        yield from flow_exchanges(file, str(path))


def _readers() -> dict[str, Reader]:
    return {"har": _read_har, "vcr": _read_vcr, "mitmproxy": _read_mitmproxy}


def import_files(
    paths: list[Path], out: Path, fmt: str | None = None, redactor: Redactor | None = None
) -> ImportReport:
    """Import ``paths`` into a new segment in the directory ``out`` (made, mode 0700, if missing),
    each file read as ``fmt`` or as its content says. Raises :class:`ImportFailed`, having written
    nothing."""
    formats = [(path, fmt or detect_format(path, _start(path))) for path in paths]
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ImportFailed(f"{out}: cannot make the directory: {exc.strerror or exc}") from None
    sink = ImportSink(out, redactor)
    reports: list[FileReport] = []
    current = out
    try:
        for path, kind in formats:
            current = path
            reports.append(_import_one(path, kind, sink))
        current = out
        sink.close()
    except BaseException as exc:
        sink.abandon()
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()
        # A file of another shape than its format's can fail anywhere in its reader: each is a
        # one-line error (numbers too large, values of the wrong type, nesting too deep).
        unreadable = (ImportFailed, CassetteError, ValueError, OSError, ArithmeticError, TypeError)
        if isinstance(exc, (*unreadable, RecursionError)):
            raise ImportFailed(f"{current}: {_why(exc)}; nothing was written") from None
        raise
    if made and not sink.paths:
        with contextlib.suppress(OSError):
            out.rmdir()  # nothing imported: leave no empty directory behind
    return ImportReport(reports, sink.paths)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return " ".join(str(exc).split())[:300]


def _start(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(SNIFF_BYTES)
    except OSError as exc:
        raise ImportFailed(f"{path}: cannot read: {exc.strerror or exc}") from None


def _import_one(path: Path, kind: str, sink: ImportSink) -> FileReport:
    report = FileReport(path, kind)
    for entry in _readers()[kind](path):
        if isinstance(entry, Skipped):
            report.skipped[entry.reason] += 1
            continue
        try:
            sink.add(entry)
        except EntryError as exc:
            report.skipped[str(exc)] += 1
        else:
            report.imported += 1
    return report


def report_lines(report: ImportReport, out: Path) -> Iterator[str]:
    """What an import did, in words: one line per file, then where it went."""
    for f in report.files:
        line = f"{f.path}: {plural(f.imported, 'exchange')} ({f.format})"
        if f.skipped:
            reasons = "; ".join(f"{n} {why}" for why, n in f.skipped.most_common())
            line += f", {sum(f.skipped.values())} skipped: {reasons}"
        yield line
    if report.written:
        yield f"{plural(report.exchanges, 'exchange')} written to {report.written[0]}"
    else:
        yield f"nothing imported: no capture written in {out}"
