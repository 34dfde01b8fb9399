"""SASRec as an evaluated system: sequences from the log before the cutoff, full-softmax training,
full-ranking recommendations (the ``evaluate.Recommender`` protocol, like every baseline).

Training rows are each user's items in time order cut into windows of ``max_length + 1`` from the
newest backwards (every interaction is a target once); the newest ``max_length`` items are the
query at the cutoff. Users with no history get the popularity order (the evaluation's common
cold-user policy replaces it anyway).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rayrec.features.vocab import PAD_ID
from rayrec.models.sasrec import SASRecModel, SASRecSpec
from rayrec.train.baselines import prior_counts, tiebreak, user_batches
from rayrec.train.evaluate import EvalSplit, EventLog, topk_excluding


def user_sequences(log: EventLog) -> tuple[np.ndarray, list[np.ndarray]]:
    """The users of ``log`` (sorted by user then time) and each one's item ids, oldest first."""
    users, starts = np.unique(log.user_idx, return_index=True)
    return users, np.split(log.item_idx, starts[1:]) if len(starts) else []


def training_windows(sequences: list[np.ndarray], max_length: int) -> np.ndarray:
    """``[N, max_length + 1]`` right-aligned windows cut from each sequence's end backwards, 0-padded;
    a window's first ``max_length`` items are the input, its last ``max_length`` the targets."""
    size = max_length + 1
    rows = []
    for seq in sequences:
        for end in range(len(seq), 1, -max_length):
            window = seq[max(0, end - size):end]
            rows.append(np.pad(window, (size - len(window), 0)))
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, size), dtype=np.int64)


def last_items(log: EventLog, users: np.ndarray, max_length: int) -> np.ndarray:
    """``[len(users), max_length]``: each user's newest items before the cutoff, right-aligned."""
    out = np.zeros((len(users), max_length), dtype=np.int64)
    end = np.searchsorted(log.user_idx, users, side="right")
    start = np.maximum(np.searchsorted(log.user_idx, users, side="left"), end - max_length)
    for row, (lo, hi) in enumerate(zip(start, end)):
        if hi > lo:
            out[row, max_length - (hi - lo):] = log.item_idx[lo:hi]
    return out


class SASRecRecommender:
    """Trains a :class:`SASRecModel` on the split's prior log in ``fit``; ``on_epoch`` (if set) is
    called after every epoch with (epoch, model), e.g. to report validation metrics to Ray Tune."""

    name = "SASRec"

    def __init__(self, max_length: int = 50, dim: int = 64, layers: int = 2, heads: int = 2, dropout: float = 0.2,
                 lr: float = 1e-3, epochs: int = 20, batch_size: int = 128, weight_decay: float = 0.0,
                 seed: int = 0, on_epoch: Callable[[int, "SASRecRecommender"], None] | None = None) -> None:
        self.max_length, self.dim, self.layers, self.heads = int(max_length), int(dim), int(layers), int(heads)
        self.dropout, self.lr, self.epochs, self.batch_size = float(dropout), float(lr), int(epochs), int(batch_size)
        self.weight_decay, self.seed, self.on_epoch = float(weight_decay), int(seed), on_epoch
        self.model: SASRecModel | None = None
        self.popularity: np.ndarray | None = None

    def fit(self, split: EvalSplit) -> None:
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        spec = SASRecSpec(n_items=split.n_items, max_length=self.max_length, dim=self.dim, layers=self.layers,
                          heads=self.heads, dropout=self.dropout)
        self.model = SASRecModel(spec)
        self.popularity = prior_counts(split)
        windows = torch.as_tensor(training_windows(user_sequences(split.prior)[1], self.max_length))
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for epoch in range(1, self.epochs + 1):
            self.model.train()
            for rows in np.array_split(rng.permutation(len(windows)), max(1, -(-len(windows) // self.batch_size))):
                batch = windows[rows]
                inputs, targets = batch[:, :-1], batch[:, 1:]
                keep = (targets != PAD_ID) & (inputs != PAD_ID)  # a target needs at least one item before it
                if not keep.any():
                    continue
                logits = self.model.logits(self.model.hidden(inputs)[keep])
                loss = F.cross_entropy(logits, targets[keep])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if self.on_epoch is not None:
                self.on_epoch(epoch, self)

    @torch.no_grad()
    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray:
        assert self.model is not None and self.popularity is not None, "fit first"
        self.model.eval()
        queries = last_items(split.prior, split.users, self.max_length)
        out = np.empty((len(split.users), k), dtype=np.int64)
        tie = tiebreak(self.popularity)
        cold = ~(queries != PAD_ID).any(axis=1)
        for rows in user_batches(len(queries), split.n_items):
            scores = self.model.next_item_logits(torch.as_tensor(queries[rows])).double().numpy()
            scores[cold[rows]] = 0.0  # no history: the popularity order below decides
            out[rows] = topk_excluding(scores + tie, split.seen[rows], k, exclude_seen)
        return out
