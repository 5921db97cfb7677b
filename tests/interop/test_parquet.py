"""``wirecap export --format parquet``: one row per exchange, queried with DuckDB."""

from __future__ import annotations

import stat
import sys

import pytest
from captures import Spec, write_capture
from click.testing import CliRunner

from wirecap.cli import main

duckdb = pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")


async def test_parquet_rows_answer_sql_with_the_facts_and_findings(tmp_path):
    specs = [
        Spec(f"{i:012x}", status=503 if i % 4 == 3 else 200, model="gpt-4o" if i % 2 else "o3")
        for i in range(40)
    ]
    await write_capture(tmp_path / "cap", specs)
    out = tmp_path / "exchanges.parquet"
    result = CliRunner().invoke(
        main, ["export", str(tmp_path / "cap"), "--format", "parquet", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    db = duckdb.connect()
    rows = db.execute(
        f"SELECT model, count(*), sum(CASE WHEN status >= 500 THEN 1 ELSE 0 END) "
        f"FROM '{out}' GROUP BY model ORDER BY model"
    ).fetchall()
    assert rows == [("gpt-4o", 20, 10), ("o3", 20, 0)]
    failing = db.execute(
        f"SELECT id FROM '{out}' WHERE list_contains(findings, 'http-error') ORDER BY id"
    ).fetchall()
    assert [x for (x,) in failing] == [f"{i:012x}" for i in range(40) if i % 4 == 3]
    kinds = dict(db.execute(f"DESCRIBE SELECT * FROM '{out}'").fetchall()[i][:2] for i in range(3))
    assert kinds == {"id": "VARCHAR", "start": "TIMESTAMP WITH TIME ZONE", "route": "VARCHAR"}
    [(first,)] = db.execute(f"SELECT min(start) FROM '{out}'").fetchall()
    assert first.year >= 2026


def test_parquet_without_pyarrow_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an absent package looks like
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = CliRunner().invoke(
        main, ["export", "fixtures", "--format", "parquet", "-o", str(tmp_path / "x.parquet")]
    )
    assert result.exit_code == 1
    assert "pip install 'wirecap[parquet]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.parquet").exists()
