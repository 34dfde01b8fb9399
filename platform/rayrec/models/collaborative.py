"""Collaborative filtering for the ranker's score: ALS item factors and the fold-in of a history.

Why the ranker reads it: on the real shop the retrieval tower's collaborative signal is weaker than
matrix factorisation's (Online Retail, test Recall@20 of retrieval alone 0.028 vs implicit ALS
0.039), and the two disagree usefully: adding the ALS score of each candidate to the ranker's score
(weight ``RankerSpec.collaborative_boost``, fitted on validation like the trend boost) raised the
two-stage system's test Recall@20 and NDCG@20 on the demo and Online Retail by 1–3% (mean of three
training seeds); validation keeps it off where it does not help (MovieLens). See benchmarks/README.

Why fold-in and not the users' ALS factors: serving knows a user by the recent history the feature
store holds, not by a row of the training matrix, and a user's newest events must count at once.
A user's vector is the exact ALS user step for a user whose items are that history (implicit's
``recalculate_user``): with confidence ``c_i`` = how often item i is in the history (``alpha`` 1),
``u = (YᵀY + λI + Σ_i (c_i - 1) y_i y_iᵀ)⁻¹ Σ_i c_i y_i``, one small batched solve per request batch.
The item factors ``Y`` are fitted by the ``implicit`` library (``train.collaborative``) on the same
interactions the models learn from.
"""

from __future__ import annotations

import torch

REGULARIZATION = 0.05  # ALS's λ: the fit (train.collaborative) and the fold-in must use the same one


def regularized_gram(item_factors: torch.Tensor) -> torch.Tensor:
    """[f, f] YᵀY + λI: the part of every user's system that does not depend on the user (computed once
    per table; per request it would cost n_items·f² multiply-adds)."""
    f = item_factors.shape[1]
    return item_factors.T @ item_factors + REGULARIZATION * torch.eye(f, dtype=item_factors.dtype,
                                                                      device=item_factors.device)


def fold_in(item_factors: torch.Tensor, gram: torch.Tensor, hist_items: torch.Tensor) -> torch.Tensor:
    """[B, f] ALS user vectors of histories ``hist_items`` [B, L] (0 = padding) against
    ``item_factors`` [n_items, f] (``gram``: their ``regularized_gram``); a history without items gets
    the zero vector."""
    real = hist_items > 0
    y = item_factors[hist_items] * real.unsqueeze(-1)  # [B, L, f]
    # Σ_i (c_i - 1) y_i y_iᵀ over distinct items = Σ over history slots minus one slot per distinct
    # item: every slot but the first of its item counts once.
    earlier_same = (hist_items.unsqueeze(2) == hist_items.unsqueeze(1)).tril(-1).any(-1)
    repeat = (real & earlier_same).to(y.dtype)
    a = gram + torch.einsum("bl,blf,blg->bfg", repeat, y, y)
    return torch.linalg.solve(a, y.sum(1))


def collaborative_scores(item_factors: torch.Tensor, gram: torch.Tensor, hist_items: torch.Tensor,
                         cand: torch.Tensor) -> torch.Tensor:
    """[B, C]: the ALS preference of each history's folded-in user for its candidates ``cand`` [B, C]."""
    users = fold_in(item_factors, gram, hist_items)
    return (users.unsqueeze(1) * item_factors[cand]).sum(-1)
