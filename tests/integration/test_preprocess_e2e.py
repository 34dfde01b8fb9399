"""End to end through real Ray Data: synthetic tiny log → preprocess → outputs that add up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.config import load_config
from rayrec.data.examples import user_bucket
from rayrec.data.preprocess import run_preprocess
from rayrec.data.synthetic import generate
from rayrec.features.vocab import Vocabulary
from tests.conftest import REPO, read_parquet_in_order

pytestmark = pytest.mark.integration


def _config(raw: Path, out: Path, *extra: str):
    return load_config(REPO / "configs" / "demo.yaml", [
        f"source.events={raw / 'events'}", f"source.catalog={raw / 'catalog.csv'}", f"preprocess.out_dir={out}",
        "preprocess.min_user_events=2", "preprocess.min_item_events=2", *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("tiny")
    summary = generate(root / "raw", scale="tiny", seed=3)
    manifest = run_preprocess(_config(root / "raw", root / "out"))
    return root, summary, manifest


def _read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def test_every_row_is_accounted_for(tiny):
    root, summary, manifest = tiny
    c = manifest["counts"]
    assert c["rows_read"] == summary.n_events  # every line the generator wrote, bad ones included
    assert c["adds_up"] and c["rows_read"] == c["kept"] + c["rejected"] + c["duplicates"] + c["filtered_kcore"]
    assert len(_read(root / "out" / "rejects")) == c["rejected"]
    assert len(_read(root / "out" / "duplicates")) == c["duplicates"] == summary.bad_rows["duplicate"]
    events = _read(root / "out" / "events")
    assert len(events) == c["kept_interactions"]
    rejects = _read(root / "out" / "rejects")
    assert rejects["reason"].notna().all() and rejects["source_row"].gt(0).all()


def test_every_injected_bad_kind_is_quarantined_with_its_reason(tiny):
    _, summary, manifest = tiny
    by_reason = manifest["counts"]["rejected_by_reason"]
    for kind, n in summary.bad_rows.items():
        if kind in ("duplicate", "total_rows") or kind.startswith("catalog_"):
            continue
        assert by_reason.get(kind, 0) >= n, (kind, by_reason)
    assert manifest["catalog"]["rejected"] == sum(v for k, v in summary.bad_rows.items() if k.startswith("catalog_"))


def test_split_has_no_leakage(tiny):
    root, _, manifest = tiny
    events = _read(root / "out" / "events")
    t1, t2 = manifest["split_cutoffs_ms"]
    by_split = events.groupby("split")["ts_ms"].agg(["min", "max"])
    assert by_split.loc[0, "max"] < t1 <= by_split.loc[1, "min"]
    assert by_split.loc[1, "max"] < t2 <= by_split.loc[2, "min"]
    for name in ("ranking", "search"):
        df = _read(root / "out" / name)
        assert ((df["split"] == 0) == (df["ts_ms"] < t1)).all()
    # a history never contains the future: every gap is >= 0
    gaps = pa.concat_arrays([c.flatten() for c in pq.read_table(root / "out" / "events", columns=["hist_gaps_s"])
                             .column(0).chunks])
    assert pa.compute.min(gaps).as_py() >= 0


def test_vocabularies_are_stable_across_runs(tiny, tmp_path):
    root, _, manifest = tiny
    again = run_preprocess(_config(root / "raw", tmp_path / "again"))
    assert again["vocab_fingerprint"] == manifest["vocab_fingerprint"]
    for name in ("users", "items", "tokens"):
        assert (root / "out" / "vocab" / f"{name}.json").read_text() == (tmp_path / "again" / "vocab" / f"{name}.json").read_text()
    assert again["outputs"] == manifest["outputs"]
    for output in ("events", "ranking", "search"):  # row order too: the ranker trains in file order
        assert read_parquet_in_order(root / "out" / output).combine_chunks().equals(
            read_parquet_in_order(tmp_path / "again" / output).combine_chunks())


def test_examples_are_written_in_bucket_order(tiny):
    root, _, _ = tiny
    users = np.array(Vocabulary.load(root / "out" / "vocab", "users").values, dtype=object)
    for output in ("events", "ranking"):
        user_idx = read_parquet_in_order(root / "out" / output).column("user_idx").to_numpy()
        buckets = user_bucket(pd.Series(users[user_idx]), _config(root / "raw", root / "out").preprocess.user_buckets)
        assert len(np.unique(buckets)) > 1
        assert (np.diff(buckets) >= 0).all(), f"{output}: user buckets out of order"


def test_item_table_covers_the_catalog(tiny):
    root, _, manifest = tiny
    items = _read(root / "out" / "items.parquet")
    assert len(items) == manifest["catalog"]["kept"] == manifest["vocab_sizes"]["items"] - 2
    assert items["item_idx"].tolist() == list(range(2, len(items) + 2))
    assert items["price_bucket"].between(1, 10).all() and items["title_tokens"].map(len).gt(0).all()
