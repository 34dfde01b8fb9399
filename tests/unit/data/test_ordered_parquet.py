"""OrderedParquetDatasink: the files, read in name order, hold the dataset's rows in its order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from rayrec.data.ordered_parquet import OrderedParquetDatasink, write_ordered_parquet
from tests.conftest import read_parquet_in_order


def test_rows_come_back_in_the_datasets_order(ray_local, tmp_path):
    # Blocks larger than pyarrow's 32,768-row write batches, which Ray's writer hands to threads. That race
    # needs a busy machine (preprocessing Online Retail after training showed it); this pins the contract.
    ds = ray_local.data.range(600_000, override_num_blocks=6).map_batches(
        lambda b: {"id": b["id"], "payload": np.sqrt(b["id"])}, batch_size=None)
    write_ordered_parquet(ds, tmp_path / "out")
    table = read_parquet_in_order(tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*.parquet"))) > 1
    assert np.array_equal(table.column("id").to_numpy(), np.arange(600_000))


def test_a_block_of_nulls_joins_its_files_schema(tmp_path):
    sink = OrderedParquetDatasink(tmp_path / "out")
    sink.on_write_start()
    blocks = [pa.table({"i": [0, 1], "negative": pa.nulls(2)}), pa.table({"i": [2], "negative": ["random"]})]
    sink.write(blocks, SimpleNamespace(task_idx=7))
    table = read_parquet_in_order(tmp_path / "out")
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["part-000007.parquet"]
    assert table.column("i").to_pylist() == [0, 1, 2]
    assert table.column("negative").to_pylist() == [None, None, "random"]
