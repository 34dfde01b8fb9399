"""End to end through real Ray Data: synthetic tiny log → preprocess → outputs that add up, a
training-period k-core, a manifest the checker recounts, and the pandas baseline's equal outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.config import load_config
from rayrec.data import preprocess
from rayrec.data.examples import user_bucket
from rayrec.data.manifest_check import ManifestMismatch, check_manifest, output_digests, verify_manifest
from rayrec.data.preprocess import PreprocessError, run_preprocess
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
    assert len(events) + len(_read(root / "out" / "search_events")) == c["kept"]
    rejects = _read(root / "out" / "rejects")
    assert rejects["reason"].notna().all() and rejects["source_row"].gt(0).all()
    filtered = _read(root / "out" / "filtered")
    assert len(filtered) == c["filtered_kcore"] > 0 and c["kcore_period"] == "train"
    assert filtered["reason"].notna().all() and filtered["kcore_round"].gt(0).all()
    assert filtered["reason_code"].value_counts().to_dict() == c["filtered_by_reason"]


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


# ---- k-core on the training period ----------------------------------------------------------

PROBE_TRAIN, PROBE_TEST = "2024-01-02T12:00:00Z", "2024-01-30T20:{:02d}:00Z"


def _probe_log(tiny_raw: Path, root: Path) -> Path:
    """The tiny log plus: a user with one training event and many test ones, a new user of the test
    period with one event, on an item with no event before the test period."""
    raw = root / "probe"
    shutil.copytree(tiny_raw, raw)
    events = pd.read_csv(next((raw / "events").glob("*.csv")), dtype=str, keep_default_na=False)
    common = events.loc[events["event_type"] == "view", "item_id"].value_counts().index[0]
    rows = [("P_SPARSE", common, PROBE_TRAIN)] + [("P_SPARSE", common, PROBE_TEST.format(m)) for m in range(6)]
    rows.append(("P_NEW", "P_ITEM", PROBE_TEST.format(30)))
    lines = [f"{u},{i},view,{ts},S-{u},,," for u, i, ts in rows]
    (raw / "events" / "zz-probe.csv").write_text("user_id,item_id,event_type,timestamp,session_id,query,price,quantity\n"
                                                 + "\n".join(lines) + "\n")
    with (raw / "catalog.csv").open("a") as catalog:
        catalog.write("P_ITEM,Probe Item,Toys > Plush > Stuffed Animals,Funforge,9.99\n")
    return raw


def test_kcore_decides_on_the_training_period(tiny, tmp_path):
    root, _, _ = tiny
    raw = _probe_log(root / "raw", tmp_path)
    manifest = run_preprocess(_config(raw, tmp_path / "out"))
    t1, t2 = manifest["split_cutoffs_ms"]
    assert pd.Timestamp(PROBE_TRAIN).value // 10**6 < t1 and pd.Timestamp(PROBE_TEST.format(0)).value // 10**6 >= t2
    filtered = _read(tmp_path / "out" / "filtered")
    # Seven events in all (the whole-log rule kept it), one in training: removed from every period.
    sparse = filtered[filtered["user_id"] == "P_SPARSE"]
    assert len(sparse) == 7 and set(sparse["reason_code"]) == {"kcore_user"}
    # One event, on an item first seen in the test period (the whole-log rule removed both): new, kept.
    assert "P_NEW" not in set(filtered["user_id"])
    users = Vocabulary.load(tmp_path / "out" / "vocab", "users")
    items = Vocabulary.load(tmp_path / "out" / "vocab", "items")
    events = _read(tmp_path / "out" / "events")
    new_rows = events[events["user_idx"] == users.encode(["P_NEW"])[0]]
    assert new_rows["item_idx"].tolist() == items.encode(["P_ITEM"]).tolist() and new_rows["split"].tolist() == [2]
    assert "P_SPARSE" not in users.values


# ---- the manifest checker -------------------------------------------------------------------


def test_checker_accepts_the_true_manifest(tiny):
    root, _, _ = tiny
    assert check_manifest(root / "out", _config(root / "raw", root / "out").source) == []


def _copy_out(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(root / "out", out)
    return out


def test_checker_rejects_a_miscounted_manifest(tiny, tmp_path):
    root, _, _ = tiny
    out, source = _copy_out(root, tmp_path), _config(root / "raw", root / "out").source
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["counts"]["duplicates"] += 1
    manifest["counts"]["filtered_kcore"] -= 1  # the manifest's own sum still adds up
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = check_manifest(out, source)
    assert any(p.startswith("duplicates:") for p in problems) and any(p.startswith("filtered_kcore:") for p in problems)
    with pytest.raises(ManifestMismatch, match="duplicates"):
        verify_manifest(out, source)


def test_checker_rejects_an_output_missing_a_row(tiny, tmp_path):
    root, _, manifest = tiny
    out, source = _copy_out(root, tmp_path), _config(root / "raw", root / "out").source
    part = max((out / "rejects").glob("*.parquet"), key=lambda f: pq.read_metadata(f).num_rows)
    table = pq.read_table(part)
    reason = table.column("reason_code")[0].as_py()
    pq.write_table(table.slice(1), part)
    problems = check_manifest(out, source)
    assert f"rejected_by_reason[{reason}]: manifest {manifest['counts']['rejected_by_reason'][reason]}, files " \
           f"{manifest['counts']['rejected_by_reason'][reason] - 1}" in problems
    assert any(p.startswith("the files do not add up") for p in problems)


def test_run_preprocess_fails_loudly_when_a_count_is_off(tiny, tmp_path, monkeypatch):
    root, _, _ = tiny
    true_counts = preprocess.event_counts

    def off_by_one(rows_read, rejected_by_reason, duplicates, *rest):  # still adds up on its own
        return true_counts(rows_read + 1, rejected_by_reason, duplicates + 1, *rest)

    monkeypatch.setattr(preprocess, "event_counts", off_by_one)
    with pytest.raises(PreprocessError, match=r"rows_read: manifest \d+, files \d+.*duplicates: manifest"):
        run_preprocess(_config(root / "raw", tmp_path / "out"))


# ---- the pandas baseline of benchmarks/preprocess.py ----------------------------------------


def test_pandas_baseline_writes_the_same_outputs(tiny, tmp_path, monkeypatch):
    root, _, manifest = tiny
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from pandas_preprocess import run_pandas_preprocess

    result = run_pandas_preprocess(_config(root / "raw", tmp_path / "pandas"))
    for key in ("counts", "outputs", "vocab_sizes", "split_cutoffs_ms", "catalog"):
        assert result[key] == manifest[key], key
    ray_digests, pandas_digests = output_digests(root / "out"), output_digests(tmp_path / "pandas")
    assert ray_digests == pandas_digests
    assert len(ray_digests) == 9 + 5 and ray_digests["filtered"] != "empty"  # every table and vocabulary
