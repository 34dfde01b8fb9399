"""Product search over real HTTP against a real local Serve app (tantivy + MiniLM in the retrieval
replica, the ranker for known users), and `rayrec evaluate --task search` on the same release."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayrec.config import with_values
from rayrec.release import ReleaseLayout
from rayrec.serve.launch import http_json

pytestmark = pytest.mark.integration


def _search(base: str, **body) -> tuple[int, dict]:
    return http_json("POST", f"{base}/v1/search", body)


def _word_of_an_item(release) -> tuple[str, dict]:
    item = pq.read_table(ReleaseLayout(release).items).to_pylist()[0]
    return max((w for w in str(item["title"]).split() if w.isalpha()), key=len).lower(), item


def test_search_finds_items_by_title_words_and_says_where_from(served):
    base, _, release = served
    word, item = _word_of_an_item(release)
    status, body = _search(base, query=word, k=10)
    assert status == 200, body
    assert body["items"] and body["version"] == release.name and body["reason"] is None
    assert not body["personalized"]  # anonymous
    assert all(word in (it["title"] or "").lower() or it["sources"]["semantic"] for it in body["items"])
    assert any(it["sources"]["lexical"] == 1 for it in body["items"])
    assert any(it["sources"]["semantic"] for it in body["items"])  # MiniLM ran in the replica


def test_typos_and_filters(served):
    base, _, release = served
    items = pq.read_table(ReleaseLayout(release).items).to_pylist()
    word = next(w for it in items for w in str(it["title"]).split() if len(w) >= 6 and w.isalpha()).lower()
    typo = word[0] + word[2] + word[1] + word[3:]  # two letters swapped
    status, body = _search(base, query=typo, k=5)
    assert status == 200 and any(word in (it["title"] or "").lower() for it in body["items"]), (typo, body)
    top = items[0]["category"].split(" > ")[0]
    status, body = _search(base, query=word, k=20, filters={"category": top})
    assert status == 200
    assert all(it["category"].startswith(top) for it in body["items"])


def test_known_users_get_the_text_matches_reordered_for_them(served):
    base, cfg, release = served
    histories = pq.read_table(ReleaseLayout(release).histories).to_pylist()
    user = max(histories, key=lambda h: len(h["item_id"]))["user_id"]
    word, _ = _word_of_an_item(release)
    depth = cfg.search.personalize_depth
    _, anonymous = _search(base, query=word, k=depth)
    status, personal = _search(base, query=word, user_id=user, k=depth)
    assert status == 200 and personal["personalized"], personal
    # the ranker re-orders the fused head; it never brings in items the text did not find
    assert {it["item_id"] for it in personal["items"]} == {it["item_id"] for it in anonymous["items"]}
    _, stranger = _search(base, query=word, user_id="never-seen-user", k=5)
    assert not stranger["personalized"]  # no history: text order


def test_no_match_is_an_empty_answer_with_a_reason(served):
    base, _, _ = served
    for query in ("zzqxv wkpjq", "!!!"):
        status, body = _search(base, query=query, k=5)
        assert status == 200 and body["items"] == [] and query in body["reason"], body


@pytest.mark.parametrize(("body", "says"), [
    ({"query": ""}, "empty"),
    ({"query": "    "}, "empty"),
    ({"query": "x" * 201}, "search.max_query_chars"),
    ({"query": 123}, "string"),
    ({"query": ["shoes"]}, "string"),
    ({"query": None}, "string"),
    ({}, "required"),
    ({"query": "shoes", "k": 0}, "greater than"),
    ({"query": "shoes", "k": 51}, "serve.max_k"),
    ({"query": "shoes", "user_id": ""}, "at least 1"),
    ({"query": "shoes", "colour": "red"}, "not permitted"),
])  # fmt: skip
def test_bad_queries_get_422_with_a_reason(served, body, says):
    base, _, _ = served
    status, answer = _search(base, **body)
    assert status == 422, answer
    assert says in json.dumps(answer["detail"]), answer


def test_search_evaluation_scores_every_system_on_the_release(served, tmp_path):
    from rayrec.index.search_eval import SYSTEMS, run_search_evaluation

    _, cfg, _ = served
    cfg = with_values(cfg, {"evaluate.out_dir": str(tmp_path)})
    table, info = run_search_evaluation(cfg, "train")  # the tiny data's test split has few searches
    assert list(table["system"]) == list(SYSTEMS) and info["queries"] > 0
    rows = table.set_index("system")
    assert ((rows >= 0) & (rows <= 1)).all().all()
    # personalization re-orders within the top personalize_depth (<= 50): the same items are in the top 50
    assert cfg.search.personalize_depth <= 50
    assert rows.loc["fused+personalized", "recall@50"] == pytest.approx(rows.loc["fused", "recall@50"])
    assert (tmp_path / "search" / "report.md").is_file() and (tmp_path / "search" / "report.png").is_file()


def test_tune_search_learns_weights_that_serve_and_evaluate_accept(served, tmp_path):
    from rayrec.config import load_config
    from rayrec.index.search_tune import GRID, tune_search_blend

    _, cfg, _ = served
    cfg = with_values(cfg, {"evaluate.out_dir": str(tmp_path)})
    table, chosen, info = tune_search_blend(cfg, "train")
    assert len(table) == np.prod([len(v) for v in GRID.values()]) and info["queries"] > 0
    assert table["ndcg@10"].is_monotonic_decreasing and table["ndcg@10"].iloc[0] >= info["current"]
    for name in GRID:
        assert getattr(chosen.search, name) == table[name].iloc[0]
    reloaded = load_config(info["paths"]["config"])
    assert reloaded.search == chosen.search and reloaded.serve == cfg.serve
