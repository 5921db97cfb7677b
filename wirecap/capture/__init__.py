"""The capture file format: records, frames, index, writer and reader.

Read a capture::

    from wirecap.capture import open_capture

    with open_capture("captures/") as capture:
        for exchange in capture.exchanges():
            print(exchange.id, exchange.method, exchange.target, exchange.status)
        one = capture.get("a1b2c3d4e5f6")  # through the index, without a scan

This package imports no other wirecap package.
"""

from wirecap.capture.frames import Damage, FrameError
from wirecap.capture.index import Index, IndexEntry
from wirecap.capture.reader import (
    Capture,
    CaptureError,
    CaptureFile,
    Exchange,
    FileDamage,
    IndexRepair,
    assemble,
    open_capture,
    proxy_path_of,
    repair_index,
    strip_proxy_path,
)
from wirecap.capture.records import (
    FORMAT_NAME,
    FORMAT_VERSION,
    BodyChunk,
    ExchangeEnd,
    ExchangeNote,
    Gap,
    Header,
    Record,
    RecordError,
    Redaction,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BodyChunk",
    "Capture",
    "CaptureError",
    "CaptureFile",
    "Damage",
    "Exchange",
    "ExchangeEnd",
    "ExchangeNote",
    "FileDamage",
    "FrameError",
    "Gap",
    "Header",
    "Index",
    "IndexEntry",
    "IndexRepair",
    "Record",
    "RecordError",
    "Redaction",
    "RequestReceived",
    "ResponseHead",
    "UpstreamRequest",
    "assemble",
    "open_capture",
    "proxy_path_of",
    "repair_index",
    "strip_proxy_path",
]
