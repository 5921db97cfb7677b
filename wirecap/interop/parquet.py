"""Parquet export: one row per exchange, for DuckDB, Spark, ClickHouse and pandas.

The rows are the facts of ``inspect --json`` (time, route, method, path, status, outcome, model,
tokens, TTFT, duration, bytes) plus the codes of the exchange's findings; bodies and heads stay in
the capture. Columns have fixed types, so a query never meets a column whose type changed with the
data. Rows are written in row groups of :data:`ROW_GROUP` exchanges, so memory holds one group
whatever the capture's size. pyarrow is an optional extra (``pip install 'wirecap[parquet]'``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import IO

#: Exchanges per row group (and per batch held in memory).
ROW_GROUP: Final = 16_384

#: (column, pyarrow type name, where its value comes from in an ``inspect --json`` row).
COLUMNS: Final[tuple[tuple[str, str, str], ...]] = (
    ("id", "string", "id"),
    ("start", "timestamp", "start_ns"),
    ("route", "string", "route"),
    ("method", "string", "method"),
    ("path", "string", "path"),
    ("upstream_url", "string", "upstream_url"),
    ("status", "int32", "status"),
    ("outcome", "string", "outcome"),
    ("api", "string", "api"),
    ("streamed", "bool", "streamed"),
    ("model", "string", "model"),
    ("model_requested", "string", "model_requested"),
    ("input_tokens", "int64", "input_tokens"),
    ("output_tokens", "int64", "output_tokens"),
    ("cached_tokens", "int64", "cached_tokens"),
    ("ttft_ms", "float64", "ttft_ms"),
    ("ttfb_ms", "float64", "ttfb_ms"),
    ("duration_ms", "float64", "duration_ms"),
    ("tokens_per_second", "float64", "tokens_per_second"),
    ("request_bytes", "int64", "request_bytes"),
    ("response_bytes", "int64", "response_bytes"),
    ("finish_reason", "string", "finish_reason"),
    ("tool_calls", "int32", "tool_calls"),
)


class ParquetUnavailable(RuntimeError):
    """pyarrow is not installed."""


def _pyarrow() -> tuple[Any, Any]:
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise ParquetUnavailable(
            "Parquet export needs pyarrow: pip install 'wirecap[parquet]'"
        ) from None


def schema() -> Any:
    """The Parquet schema: :data:`COLUMNS`, then ``findings`` (a list of detector codes)."""
    pa, _ = _pyarrow()
    types = {
        "string": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),  # what Spark and ClickHouse read as a time
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }
    fields = [pa.field(name, types[kind]) for name, kind, _ in COLUMNS]
    return pa.schema([*fields, pa.field("findings", pa.list_(pa.string()))])


def write_parquet(rows: Iterable[tuple[Mapping[str, Any], Sequence[str]]], out: IO[bytes]) -> int:
    """Write ``(row, finding codes)`` pairs to ``out`` as Parquet; returns how many."""
    pa, pq = _pyarrow()
    table_schema = schema()
    count = 0
    with pq.ParquetWriter(out, table_schema, compression="zstd") as writer:
        batch: list[tuple[Mapping[str, Any], Sequence[str]]] = []
        for pair in rows:
            batch.append(pair)
            if len(batch) == ROW_GROUP:
                writer.write_table(_table(pa, table_schema, batch))
                count += len(batch)
                batch = []
        if batch or not count:
            writer.write_table(_table(pa, table_schema, batch))
            count += len(batch)
    return count


def _table(pa: Any, table_schema: Any, batch: list[tuple[Mapping[str, Any], Sequence[str]]]) -> Any:
    columns = {name: [row.get(key) for row, _ in batch] for name, _, key in COLUMNS}
    columns["start"] = [None if ns is None else ns // 1000 for ns in columns["start"]]
    columns["findings"] = [list(codes) for _, codes in batch]
    return pa.table(columns, schema=table_schema)
