from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp
import torch

from rayrec.models.collaborative import REGULARIZATION, collaborative_scores, fold_in, regularized_gram
from rayrec.models.ranker import Ranker
from tests.unit.models.conftest import N_ITEMS
from tests.unit.models.test_ranker import SPEC


def _interactions(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 40, 400), rng.integers(2, N_ITEMS, 400)
    return sp.csr_matrix((np.ones(400, dtype=np.float32), (users, items)), shape=(40, N_ITEMS))


def test_fold_in_is_implicits_user_step_for_the_history_as_a_user_row():
    from implicit.cpu.als import AlternatingLeastSquares

    from threadpoolctl import threadpool_limits

    als = AlternatingLeastSquares(factors=8, regularization=REGULARIZATION, iterations=3, random_state=0)
    with threadpool_limits(limits=1, user_api="blas"):
        als.fit(_interactions(), show_progress=False)
    y = torch.as_tensor(np.asarray(als.item_factors))
    # Item 5 three times, item 9 once, padding in front: confidence = count, as a matrix row would say.
    hist = torch.tensor([[0, 0, 5, 9, 5, 5], [0, 0, 0, 0, 0, 7]])
    ours = fold_in(y, regularized_gram(y), hist)
    for row, counts in enumerate([{5: 3.0, 9: 1.0}, {7: 1.0}]):
        user_row = sp.csr_matrix((list(counts.values()), ([0] * len(counts), list(counts))), shape=(1, N_ITEMS))
        theirs = np.asarray(als.recalculate_user(0, user_row)).ravel()
        assert np.allclose(ours[row].numpy(), theirs, rtol=1e-3, atol=1e-4)


def test_a_history_without_items_folds_in_to_zero_and_scores_zero():
    y = torch.randn(N_ITEMS, 4)
    hist = torch.zeros(1, 5, dtype=torch.long)
    assert torch.equal(fold_in(y, regularized_gram(y), hist), torch.zeros(1, 4))
    assert torch.equal(collaborative_scores(y, regularized_gram(y), hist, torch.tensor([[3, 4]])), torch.zeros(1, 2))


def test_the_ranker_adds_the_boosted_als_score_and_saves_its_table(items):
    spec = replace(SPEC, collaborative_factors=4)
    model = Ranker(spec, items)
    y = torch.randn(N_ITEMS, 4)
    model.set_collaborative_items(y)
    logits, counts = torch.randn(1, 3, 2), torch.zeros(1, 3)
    hist, cand = torch.tensor([[0, 3, 4, 3]]), torch.tensor([[5, 6, 7]])
    plain = model.score(logits, counts, 0.5, hist, cand)  # collaborative_boost 0: the heads alone
    model.spec = replace(spec, collaborative_boost=0.4)
    boosted = model.score(logits, counts, 0.5, hist, cand)
    assert torch.allclose(boosted - plain, 0.4 * collaborative_scores(y, regularized_gram(y), hist, cand))
    again = Ranker(replace(spec, collaborative_boost=0.4), items)
    again.load_state_dict(model.state_dict())  # the table and its gram travel with the weights
    assert torch.equal(again.score(logits, counts, 0.5, hist, cand), boosted)
