"""Writing a Ray Dataset to Parquet with its row order kept, file by file and within each file.

Row order is part of the training data: the ranker reads its examples in file order through a small
shuffle buffer, so the same examples in another order train another model. Ray's ``write_parquet``
hands each task's blocks to ``pyarrow.dataset.write_dataset`` with ``use_threads=True``, which writes
32,768-row batches in whatever order its threads finish them (seen on Online Retail: the same rows,
batches swapped, when the machine was busy). This sink writes each task's blocks sequentially, to
``part-<task index>.parquet``; task indices follow the dataset's block order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

if TYPE_CHECKING:
    import ray.data
    from ray.data._internal.execution.interfaces import TaskContext


class OrderedParquetDatasink(Datasink[None]):
    """Parquet files under ``path`` whose concatenation in file-name order is the dataset's order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> None:
        # One schema per file: a block whose column is all nulls arrives with Arrow's null type.
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return
        schema = pa.unify_schemas([t.schema for t in tables])
        with pq.ParquetWriter(self.path / f"part-{ctx.task_idx:06d}.parquet", schema) as writer:
            for table in tables:
                writer.write_table(table.select(schema.names).cast(schema))


def write_ordered_parquet(ds: ray.data.Dataset, path: str | Path) -> None:
    """Writes ``ds`` in its block order (see the module docstring for why Ray's writer does not)."""
    ds.context.execution_options.preserve_order = True  # tasks are then numbered in block order
    ds.write_datasink(OrderedParquetDatasink(path))
