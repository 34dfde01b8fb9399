"""The item index: kind choice and tuning, the filter contract, and refusing indexes built for other data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayrec.artifacts import ArtifactError
from rayrec.config import IndexConfig
from rayrec.index.ann import INDEX_FILE, MANIFEST_FILE, ItemIndex, build_item_index

D = 32
FP = "vocab-abc"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n_items: int, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """[n_items, D] unit vectors around ``clusters`` centres; rows 0 and 1 are zeros like real tables."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, D)))
    x = unit(centres[rng.integers(0, clusters, n_items)] + 0.5 * unit(rng.standard_normal((n_items, D))))
    x[:2] = 0.0
    return x


def user_queries(items: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Noisy mixtures of two items, like user vectors between the things they liked."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(2, len(items), (2, n))
    return unit(items[a] + items[b] + 0.2 * rng.standard_normal((n, D)).astype(np.float32))


def exact_top(items: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    s = q @ items.T
    s[:, :2] = -np.inf
    if mask is not None:
        s[:, ~mask] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered(20_002)


@pytest.fixture(scope="module")
def ivf(items) -> ItemIndex:
    cfg = IndexConfig(flat_max_items=1000, nprobe=1, recall_queries=200, recall_k=50)
    return build_item_index(items, cfg, FP, queries=user_queries(items, 300))


def test_auto_picks_flat_for_small_catalogs_and_is_exact(items):
    small = items[:3002]
    index = build_item_index(small, IndexConfig(recall_queries=50), FP)
    m = index.manifest
    assert (m.kind, m.requested, m.recall_at_k, m.n_items, m.n_indexed, m.dim) == ("flat", "auto", 1.0, 3002, 3000, D)
    q = user_queries(small, 20)
    scores, ids = index.search(q, 10)
    assert np.array_equal(ids, exact_top(small, q, 10))
    assert np.allclose(scores, np.take_along_axis(q @ small.T, ids, axis=1), atol=1e-5)


def test_auto_tunes_ivf_to_the_target_recall(ivf):
    m = ivf.manifest
    assert m.kind == "ivf_flat" and m.requested == "auto"
    assert m.recall_at_k >= 0.95 and m.recall_k == 50
    assert m.params["nprobe"] > 1 and m.params["nprobe"] * 8 <= m.params["nlist"]  # raised, still pruning
    assert [t["nprobe"] for t in m.tuning][:2] == [1, 2]  # doubling from the configured start
    assert m.qps > 0 and m.exact_qps > 0 and m.build_s > 0


def test_auto_tries_hnsw_when_ivf_cannot_prune():
    rng = np.random.default_rng(3)
    uniform = unit(rng.standard_normal((4002, D)))  # no clusters: IVF must scan most lists
    cfg = IndexConfig(flat_max_items=100, recall_queries=100, recall_k=20)
    said: list[str] = []
    m = build_item_index(uniform, cfg, FP, progress=said.append).manifest
    assert any("trying hnsw" in s for s in said) and any(s.startswith("hnsw: ef_search=") for s in said)
    assert m.kind in ("hnsw", "ivf_flat", "flat")  # the faster at the target recall (flat if both lose to exact)
    assert m.recall_at_k >= 0.95


@pytest.mark.parametrize("kind", ["ivf_flat", "hnsw"])
def test_explicit_kinds_keep_their_parameters_and_reach_recall(items, kind):
    cfg = IndexConfig(kind=kind, nprobe=32, ef_search=128, hnsw_m=16, ef_construction=64,
                      recall_queries=100, recall_k=20)
    index = build_item_index(items[:8002], cfg, FP, queries=user_queries(items[:8002], 100))
    m = index.manifest
    assert m.kind == kind and m.requested == kind and len(m.tuning) == 1
    assert m.params.get("nprobe", 32) == 32 and m.params.get("ef_search", 128) == 128
    assert m.recall_at_k >= cfg.min_recall


def test_explicit_ivf_pq_builds_and_reports_its_recall(items):
    cfg = IndexConfig(kind="ivf_pq", pq_m=8, nlist=32, recall_queries=50, recall_k=10)
    m = build_item_index(items[:12_002], cfg, FP).manifest
    assert m.kind == "ivf_pq" and m.params == {"nlist": 32, "nprobe": 16, "pq_m": 8, "pq_nbits": 8}
    assert 0.3 < m.recall_at_k <= 1.0


def test_search_never_returns_reserved_ids(ivf, items):
    q = unit(np.vstack([items[2:5], np.ones((1, D), np.float32)]))
    mask = np.ones(len(items), bool)
    _, ids = ivf.search(q, 100, allowed=[None, mask, None, mask])
    assert (ids >= 2).all()
    assert ids[0, 0] == 2  # an item's own vector is its best match


def test_filters_return_full_k_when_enough_items_are_allowed(ivf, items):
    rng = np.random.default_rng(5)
    q = user_queries(items, 6, seed=9)
    half = rng.random(len(items)) < 0.5
    rare = np.zeros(len(items), bool)
    rare[rng.choice(np.arange(2, len(items)), 30, replace=False)] = True  # 30 allowed of 20k
    exclude_own = np.ones(len(items), bool)
    exclude_own[exact_top(items, q[3:4], 5)[0]] = False  # e.g. already purchased
    few = np.zeros(len(items), bool)
    few[[0, 1, 7, 8, 9]] = True  # reserved ids are never allowed, so 3 real items
    masks = [half, rare, None, exclude_own, few, np.zeros(len(items), bool)]
    scores, ids = ivf.search(q, 20, allowed=masks)

    for row in (0, 1, 2, 3):
        assert (ids[row] >= 2).all() and len(set(ids[row])) == 20
        assert np.isfinite(scores[row]).all() and (np.diff(scores[row]) <= 1e-6).all()
    assert half[ids[0]].all() and rare[ids[1]].all() and exclude_own[ids[3]].all()
    assert set(ids[1]) <= set(np.flatnonzero(rare))
    assert np.array_equal(ids[1], exact_top(items, q[1:2], 20, rare)[0])  # the selective mask is scored exactly
    assert sorted(ids[4, :3]) == [7, 8, 9] and (ids[4, 3:] == -1).all() and np.isneginf(scores[4, 3:]).all()
    assert (ids[5] == -1).all()


def test_over_fetch_path_fills_rows_and_falls_back_for_hostile_filters(ivf, items):
    ivf.exact_subset_max = 0  # force the over-fetch path on this small catalog
    try:
        q = user_queries(items, 2, seed=11)
        tenth = np.random.default_rng(2).random(len(items)) < 0.1
        # a filter that excludes the query's own neighbourhood: over-fetch finds too few, exact takes over
        hostile = np.ones(len(items), bool)
        hostile[exact_top(items, q[1:2], 6000)[0]] = False
        _, ids = ivf.search(q, 30, allowed=[tenth, hostile])
        assert tenth[ids[0]].all() and (ids[0] >= 2).all() and len(set(ids[0])) == 30
        assert np.array_equal(ids[1], exact_top(items, q[1:2], 30, hostile)[0])
        exact = exact_top(items, q[:1], 30, tenth)[0]
        assert len(set(ids[0]) & set(exact)) >= 27  # ANN recall on the filtered set
    finally:
        del ivf.exact_subset_max


def test_k_larger_than_catalog_pads(items):
    tiny = items[:12]
    index = build_item_index(tiny, IndexConfig(recall_queries=10), FP)
    scores, ids = index.search(user_queries(tiny, 2), 15)
    assert (ids[:, :10] >= 2).all() and (ids[:, 10:] == -1).all() and np.isneginf(scores[:, 10:]).all()


def test_save_load_round_trip_gives_identical_results(ivf, items, tmp_path):
    ivf.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [INDEX_FILE, MANIFEST_FILE]
    loaded = ItemIndex.load(tmp_path / "idx", dim=D, n_items=len(items), vocab_fingerprint=FP)
    assert loaded.manifest == ivf.manifest and len(loaded.manifest.index_sha256) == 64
    q = user_queries(items, 8, seed=4)
    masks = [None, np.random.default_rng(0).random(len(items)) < 0.3] * 4
    for a, b in zip(ivf.search(q, 25, masks), loaded.search(q, 25, masks)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(("change", "message"), [
    ({"dim": D + 1}, "dim=32"),
    ({"n_items": 99}, "n_items=20002"),
    ({"vocab_fingerprint": "other"}, "vocab_fingerprint='vocab-abc'"),
])
def test_load_refuses_an_index_for_other_data(ivf, items, tmp_path, change, message):
    ivf.save(tmp_path)
    expected = {"dim": D, "n_items": len(items), "vocab_fingerprint": FP} | change
    with pytest.raises(ArtifactError, match=message) as err:
        ItemIndex.load(tmp_path, **expected)
    assert MANIFEST_FILE in str(err.value) and "rebuild" in str(err.value)


def test_load_refuses_a_corrupted_index_file(ivf, items, tmp_path):
    ivf.save(tmp_path)
    path = tmp_path / INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt or was replaced") as err:
        ItemIndex.load(tmp_path, dim=D, n_items=len(items), vocab_fingerprint=FP)
    assert INDEX_FILE in str(err.value)


def test_load_refuses_a_missing_or_foreign_manifest(ivf, items, tmp_path):
    ivf.save(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"kind": "flat"}))
    with pytest.raises(ArtifactError, match="manifest lacks"):
        ItemIndex.load(tmp_path, dim=D, n_items=len(items), vocab_fingerprint=FP)
    (tmp_path / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"{MANIFEST_FILE}: missing"):
        ItemIndex.load(tmp_path, dim=D, n_items=len(items), vocab_fingerprint=FP)


def test_bad_inputs_are_named(ivf, items):
    with pytest.raises(ValueError, match=r"\[batch, 32\]"):
        ivf.search(np.zeros((2, 5), np.float32), 3)
    with pytest.raises(ValueError, match="2 masks for 1 queries"):
        ivf.search(items[2:3], 3, allowed=[None, None])
    with pytest.raises(ValueError, match="bool mask"):
        ivf.search(items[2:3], 3, allowed=[np.ones(5, bool)])
