"""Output digests of rayrec.data.manifest_check: blind to row order, file layout and integer width,
sensitive to any value, list order or row count. (The manifest recount is tested end to end on a
real preprocess output: tests/integration/test_preprocess_e2e.py.)"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.data.manifest_check import count_by, count_rows, output_digests, table_digest


def _table(**overrides: object) -> pa.Table:
    columns = {
        "user_idx": pa.array([2, 3, 4], pa.int32()),
        "ts_ms": pa.array([10, 20, None], pa.int64()),
        "session_id": pa.array(["s1", "", None]),
        "price": pa.array([1.5, float("nan"), 2.0]),
        "hist_items": pa.array([[1, 2], [], None], pa.list_(pa.int32())),
    }
    return pa.table({**columns, **overrides})


def _digest(tmp_path: Path, *parts: pa.Table) -> str:
    folder = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    for i, part in enumerate(parts):
        pq.write_table(part, folder / f"part-{i}.parquet")
    return table_digest(folder)


def test_digest_ignores_row_order_files_and_column_order(tmp_path):
    table = _table()
    reordered = table.take([2, 0, 1]).select(["hist_items", "price", "session_id", "ts_ms", "user_idx"])
    same = _digest(tmp_path, table)
    assert _digest(tmp_path, reordered) == same
    assert _digest(tmp_path, table.slice(0, 1), table.slice(1)) == same
    assert _digest(tmp_path, _table(user_idx=pa.array([2, 3, 4], pa.int64()))) == same


def test_digest_sees_values_list_order_nulls_and_counts(tmp_path):
    same = _digest(tmp_path, _table())
    changed = [
        _table(user_idx=pa.array([2, 3, 5], pa.int32())),
        _table(hist_items=pa.array([[2, 1], [], None], pa.list_(pa.int32()))),
        _table(hist_items=pa.array([[1, 2], None, []], pa.list_(pa.int32()))),  # empty and null differ
        _table(session_id=pa.array(["s1", None, None])),
        _table(price=pa.array([1.5, 0.0, 2.0])),
    ]
    for table in changed:
        assert _digest(tmp_path, table) != same
    table = _table()
    assert _digest(tmp_path, table, table.slice(0, 1)) != same  # one row twice is not the same multiset
    assert _digest(tmp_path, _table().rename_columns(["u", "ts_ms", "session_id", "price", "hist_items"])) != same


def test_empty_outputs_digest_alike_written_or_not(tmp_path):
    assert _digest(tmp_path, _table().slice(0, 0)) == table_digest(tmp_path / "never-written") == "empty"


def test_counts_read_the_files(tmp_path):
    folder = tmp_path / "rejects"
    folder.mkdir()
    pq.write_table(pa.table({"reason_code": ["a", "b", "a"]}), folder / "x.parquet")
    pq.write_table(pa.table({"reason_code": ["a"]}), folder / "y.parquet")
    assert count_rows(folder) == 4 and count_by(folder, "reason_code") == {"a": 3, "b": 1}
    assert count_rows(tmp_path / "missing") == 0 and count_by(tmp_path / "missing", "reason_code") == {}


def test_output_digests_cover_tables_and_vocabularies(tmp_path):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "users.json").write_text('["<pad>", "<unk>", "u1"]')
    pq.write_table(_table(), tmp_path / "items.parquet")
    digests = output_digests(tmp_path)
    assert digests["items.parquet"] == table_digest(tmp_path / "items.parquet") != "empty"
    assert digests["events"] == "empty" and len(digests["vocab/users.json"]) == 64
