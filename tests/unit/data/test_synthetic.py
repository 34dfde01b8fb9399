"""The synthetic generator: determinism, file format, the injected bad rows, and learnable signal."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayrec.data import synthetic
from rayrec.data.synthetic import BAD_RATES, SCALES, generate
from rayrec.schema import CATEGORY_SEPARATOR, EVENT_TYPES, FUNNEL_STAGE, RAW_CATALOG_COLUMNS, RAW_EVENT_COLUMNS

EVENT_KINDS = list(BAD_RATES)
CONSUMABLE_TOPS = {"Grocery", "Beauty", "Pet Supplies"}


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _events(out: Path) -> pd.DataFrame:
    return pd.concat([_read_csv(p) for p in sorted((out / "events").glob("part-*.csv"))], ignore_index=True)


def _classify(events: pd.DataFrame, catalog_ids: set[str]) -> pd.Series:
    """Each row's bad kind ('' when valid), recomputed from the CSV alone, first rule wins."""
    ts = pd.to_datetime(events["timestamp"], format="%Y-%m-%dT%H:%M:%SZ", errors="coerce", utc=True)
    not_search = events["event_type"] != "search"
    rules = [
        ("missing_user_id", events["user_id"].str.strip() == ""),
        ("unknown_event_type", ~events["event_type"].isin(EVENT_TYPES)),
        ("missing_item_id", not_search & (events["item_id"] == "")),
        ("unparsable_timestamp", ts.isna()),
        ("future_timestamp", ts > pd.Timestamp("2030-01-01", tz="UTC")),
        ("negative_price", events["price"].str.startswith("-")),
        ("unknown_item", (events["item_id"] != "") & ~events["item_id"].isin(catalog_ids)),
    ]
    kind = pd.Series("", index=events.index, dtype=object)
    for name, hit in rules:
        kind[hit & (kind == "")] = name
    clean = kind == ""
    kind[clean & events.duplicated(keep="first")] = "duplicate"
    return kind


@dataclasses.dataclass
class Generated:
    out: Path
    summary: synthetic.GenerateSummary
    catalog: pd.DataFrame
    events: pd.DataFrame  # all rows, with a "bad" column
    valid: pd.DataFrame  # valid rows, with ts and the item's catalog fields

    @classmethod
    def make(cls, out: Path, scale: str, seed: int = 7) -> Generated:
        summary = generate(out, scale=scale, seed=seed)
        catalog = _read_csv(out / "catalog.csv")
        events = _events(out)
        ok_catalog = catalog[~catalog["price"].str.startswith("-")].drop_duplicates("item_id")
        events["bad"] = _classify(events, set(catalog["item_id"]))
        valid = events[events["bad"] == ""].drop(columns="bad").copy()
        valid["ts"] = pd.to_datetime(valid["timestamp"], utc=True)
        valid = valid.merge(
            ok_catalog.rename(columns={"price": "catalog_price"}), on="item_id", how="left", validate="many_to_one"
        )
        return cls(out, summary, catalog, events, valid)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return Generated.make(tmp_path_factory.mktemp("tiny"), "tiny")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return Generated.make(tmp_path_factory.mktemp("small"), "small")


def _file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    generate(tmp_path / "a", scale="tiny", seed=3)
    generate(tmp_path / "b", scale="tiny", seed=3)
    generate(tmp_path / "c", scale="tiny", seed=4)
    a, b, c = (_file_bytes(tmp_path / d) for d in "abc")
    assert set(a) == {"catalog.csv", "bad_rows.json", "events/part-00000.csv"}
    assert a == b
    assert a["catalog.csv"] != c["catalog.csv"]
    assert a["events/part-00000.csv"] != c["events/part-00000.csv"]


def test_headers_are_exactly_the_raw_schema(tiny: Generated) -> None:
    assert (tiny.out / "catalog.csv").read_text().splitlines()[0] == ",".join(RAW_CATALOG_COLUMNS)
    for part in (tiny.out / "events").glob("part-*.csv"):
        assert part.read_text().splitlines()[0] == ",".join(RAW_EVENT_COLUMNS)


def test_valid_rows_are_well_formed(tiny: Generated) -> None:
    v = tiny.valid
    assert v["user_id"].str.fullmatch(r"U\d{6}").all()
    assert v["timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    assert (v["ts"] >= pd.Timestamp("2024-01-01", tz="UTC")).all()
    assert v["session_id"].str.fullmatch(r"S\d{8}-\d{4}").all()
    assert (v["session_id"].str[1:9].astype(int) == v["user_id"].str[1:].astype(int)).all()
    search = v["event_type"] == "search"
    assert search.any() and (v.loc[search, "item_id"] == "").all() and (v.loc[search, "query"] != "").all()
    assert v.loc[~search, "item_id"].str.fullmatch(r"I\d{6}").all() and (v.loc[~search, "query"] == "").all()
    priced = v["event_type"].isin(["add_to_cart", "purchase"])
    assert (v.loc[priced, "price"] == v.loc[priced, "catalog_price"]).all()
    assert (v.loc[~priced, "price"] == "").all()
    bought = v["event_type"] == "purchase"
    assert (v.loc[bought, "quantity"].astype(int) >= 1).all() and (v.loc[~bought, "quantity"] == "").all()


def test_catalog_is_well_formed(small: Generated) -> None:
    cat = small.catalog.iloc[: SCALES["small"].n_items]  # the bad rows come after the items
    assert cat["item_id"].str.fullmatch(r"I\d{6}").all() and cat["item_id"].is_unique
    paths = cat["category"].str.split(CATEGORY_SEPARATOR)
    assert (paths.str.len() == 3).all()
    assert paths.map(lambda p: all(part.strip() for part in p)).all()
    assert paths.str[0].str.strip().nunique() == 8
    assert cat["price"].str.fullmatch(r"\d+\.\d\d").all()
    assert cat.apply(lambda r: r["title"].startswith(r["brand"] + " "), axis=1).all()
    # brands belong to one top category each
    assert cat.groupby("brand")["category"].agg(lambda c: c.str.split(">").str[0].nunique()).max() == 1
    # prices differ by category: grocery is much cheaper than electronics
    top = paths.str[0].str.strip()
    price = cat["price"].astype(float)
    assert price[top == "Grocery"].median() * 4 < price[top == "Electronics"].median()


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_every_bad_kind_is_present_and_counted_exactly(scale: str, request: pytest.FixtureRequest) -> None:
    g: Generated = request.getfixturevalue(scale)
    written = json.loads((g.out / "bad_rows.json").read_text())
    found = g.events["bad"].value_counts().to_dict()
    found.pop("", None)
    assert set(found) == set(EVENT_KINDS)
    for kind in EVENT_KINDS:
        assert found[kind] >= 1
        assert written[kind] == found[kind] == g.summary.bad_rows[kind], kind
    assert written["total_rows"] == len(g.events) == g.summary.n_events
    assert written["catalog_negative_price"] == written["catalog_duplicate_item"] == 1
    # whitespace-only user ids are among the missing ones
    missing_user = g.events.loc[g.events["bad"] == "missing_user_id", "user_id"]
    assert (missing_user == "").any() and (missing_user.str.len() > 0).any()


def test_bad_rows_are_about_half_a_percent(small: Generated) -> None:
    bad = (small.events["bad"] != "").mean()
    assert 0.003 < bad < 0.008
    assert set(small.events["bad"]) == {"", *EVENT_KINDS}


def test_catalog_bad_rows(tiny: Generated) -> None:
    cat = tiny.catalog
    negative = cat[cat["price"].str.startswith("-")]
    assert len(negative) == 1
    assert not tiny.events["item_id"].isin(negative["item_id"]).any()
    dup = cat[cat["item_id"].duplicated(keep=False)]
    assert len(dup) == 2 and dup["title"].nunique() == 2


def test_funnel_stages_follow_an_earlier_stage_of_the_same_item_in_the_session(small: Generated) -> None:
    v = small.valid[small.valid["event_type"] != "search"].copy()
    v["stage"] = v["event_type"].map(FUNNEL_STAGE)
    # timestamps strictly increase within a session, so "earlier" is well defined
    assert not v.duplicated(["session_id", "ts"]).any()
    first = v.groupby(["session_id", "item_id", "stage"])["ts"].min()
    for stage in (1, 2, 3):
        later = v[v["stage"] == stage]
        prev = first.xs(stage - 1, level="stage").rename("prev_ts")
        joined = later.join(prev, on=["session_id", "item_id"])
        assert len(later) > 0
        assert (joined["prev_ts"] < joined["ts"]).all(), f"stage {stage} without an earlier stage {stage - 1}"
    # conversion at each step is a real funnel: roughly 30% / 30% / 50%
    n = v["stage"].value_counts()
    assert 0.2 < n[1] / n[0] < 0.5 and 0.2 < n[2] / n[1] < 0.5 and 0.4 < n[3] / n[2] < 0.8


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_search_queries_match_an_item_clicked_after_them(small: Generated) -> None:
    v = small.valid
    searches = v[v["event_type"] == "search"].reset_index(drop=True)
    clicks = v.loc[v["event_type"] == "click", ["session_id", "ts", "title", "category", "brand"]]
    pairs = searches[["session_id", "ts", "query"]].reset_index().merge(clicks, on="session_id", suffixes=("", "_click"))
    pairs = pairs[pairs["ts_click"] > pairs["ts"]]
    shared = [
        bool(_words(q) & _words(f"{t} {c} {b}"))
        for q, t, c, b in zip(pairs["query"], pairs["title"], pairs["category"], pairs["brand"])
    ]
    matched = pairs.loc[shared, "index"].nunique()
    assert len(searches) > 500
    assert matched / len(searches) > 0.8
    # and they are not all the same query
    assert searches["query"].nunique() > 100


def test_item_popularity_has_a_long_tail(small: Generated) -> None:
    inter = small.valid[small.valid["event_type"] != "search"]
    counts = inter["item_id"].value_counts()
    top = counts.iloc[: SCALES["small"].n_items // 10].sum()
    assert top / counts.sum() > 0.35
    assert len(counts) > 0.8 * SCALES["small"].n_items  # ... but the tail is still seen


def _mean_tv(valid: pd.DataFrame, a: str, b: str) -> float:
    """Mean over users of the total-variation distance between their leaf categories (of views) in
    two thirds of the time span ('early', 'mid', 'late'); users with few views there are skipped."""
    v = valid[valid["event_type"] == "view"]
    t = (v["ts"] - v["ts"].min()) / (v["ts"].max() - v["ts"].min())
    v = v.assign(third=np.select([t < 1 / 3, t >= 2 / 3], ["early", "late"], "mid"))
    dist = v.groupby(["user_id", "third"])["category"].value_counts(normalize=True).unstack(fill_value=0)
    n = v.groupby(["user_id", "third"]).size()
    users = [u for u in v["user_id"].unique() if n.get((u, a), 0) >= 10 and n.get((u, b), 0) >= 10]
    assert len(users) > 100
    return float(np.mean([0.5 * np.abs(dist.loc[(u, a)] - dist.loc[(u, b)]).sum() for u in users]))


def test_tastes_drift_over_time(small: Generated, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the control: the same generator with drift switched off; the gap is what drift adds on top of noise
    monkeypatch.setitem(SCALES, "small_no_drift", dataclasses.replace(SCALES["small"], drift=0.0))
    still = Generated.make(tmp_path, "small_no_drift")
    drifting, control = _mean_tv(small.valid, "early", "late"), _mean_tv(still.valid, "early", "late")
    assert drifting > control + 0.1, (drifting, control)
    # so recent behaviour predicts the latest better than old behaviour does
    assert _mean_tv(small.valid, "mid", "late") < drifting - 0.05


def test_consumables_are_bought_again(small: Generated) -> None:
    bought = small.valid[small.valid["event_type"] == "purchase"]
    sessions = bought.groupby(["user_id", "item_id", "category"])["session_id"].nunique().reset_index()
    consumable = sessions["category"].str.split(">").str[0].str.strip().isin(CONSUMABLE_TOPS)
    repeat = sessions["session_id"] > 1
    assert repeat.sum() > 50
    assert consumable[repeat].mean() > consumable.mean() + 0.1
    assert (bought["quantity"].astype(int) > 1).any()


def test_progress_and_splitting_into_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCALES, "three_files", dataclasses.replace(SCALES["tiny"], users_per_file=20))
    calls: list[tuple[int, int]] = []
    summary = generate(tmp_path / "a", scale="three_files", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)] and summary.n_event_files == 3
    # a chunk larger than the file limit is split rather than written as one oversized file
    monkeypatch.setattr(synthetic, "MAX_ROWS_PER_FILE", 1000)
    calls.clear()
    summary = generate(tmp_path / "b", scale="tiny", progress=lambda d, t: calls.append((d, t)))
    parts = sorted((tmp_path / "b" / "events").glob("part-*.csv"))
    assert len(parts) == summary.n_event_files == calls[-1][0] == calls[-1][1] > 1
    for part in parts:
        events = _read_csv(part)
        assert len(events) <= 1000 * 1.01
        kinds = _classify(events, set(_read_csv(tmp_path / "b" / "catalog.csv")["item_id"]))
        assert set(kinds) == {"", *EVENT_KINDS}  # every file carries every kind
    assert sum(len(_read_csv(p)) for p in parts) == summary.n_events


def test_unknown_scale_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scale"):
        generate(tmp_path, scale="huge")
