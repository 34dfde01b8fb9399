"""Which splits have search events to evaluate: a log without searches must not stop the main job."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.artifacts import ArtifactError
from rayrec.index.search_eval import has_search_events, search_events


def _write_search(processed: Path, splits: list[int]) -> None:
    (processed / "search").mkdir(parents=True)
    pq.write_table(pa.table({"split": pa.array(splits, pa.int8()), "query": ["red mug"] * len(splits)}),
                   processed / "search" / "part-0.parquet")


def test_a_split_without_searches_is_reported_not_raised(tmp_path):
    _write_search(tmp_path, [0, 0, 1])
    assert has_search_events(tmp_path, "train") and has_search_events(tmp_path, "valid")
    assert not has_search_events(tmp_path, "test")
    assert search_events(tmp_path, "train").num_rows == 2
    with pytest.raises(ArtifactError, match="no test search events"):
        search_events(tmp_path, "test")


def test_a_log_preprocessed_without_any_search_folder_has_none(tmp_path):
    assert not has_search_events(tmp_path, "test")
    with pytest.raises(ArtifactError, match="no test search events"):
        search_events(tmp_path, "test")
