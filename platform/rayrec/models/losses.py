"""Retrieval and ranking losses.

In-batch sampled softmax: every other positive in the batch is a negative. Popular items appear
as negatives far more often than uniform sampling would have them, so their scores get pushed
down too much; the log-Q correction (Yi et al., RecSys 2019) subtracts log(sampling probability)
from each logit to undo that bias. With extra uniformly drawn negatives the negatives come from a
mixture of the two samplers, so every logit, in-batch or extra, is corrected by the log of the
mixture's expected count (``mixed_log_q``, as in mixed negative sampling, Yang et al., WWW 2020):
correcting the in-batch logits alone would leave the uniform ones ~log(catalog size) lower, too low
to matter in the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mixed_log_q(item_prob: torch.Tensor, batch_size: int, uniform: int, n_items: int) -> torch.Tensor:
    """log of how often each item is expected among one batch's negatives, per in-batch draw (a
    constant shift, which the softmax ignores): ``batch_size`` draws by popularity (``item_prob``,
    summing to 1) plus ``uniform`` draws over ``n_items``. Without uniform draws: log(item_prob)."""
    return torch.log(item_prob + uniform / (batch_size * n_items)).float()


def in_batch_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    item_idx: torch.Tensor,
    temperature: torch.Tensor,
    log_q: torch.Tensor | None = None,
    extra_negatives: torch.Tensor | None = None,
    extra_idx: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each user against its own item among the batch's items.

    user, item: [B, d] normalised; item_idx: [B] ids (a repeat of the row's own item elsewhere in
    the batch is not a negative); log_q: [B] log sampling probability (or expected count) of each
    row's item; extra_negatives: [M, d] item embeddings shared by all rows, with their ids
    ``extra_idx`` [M] (a row's own item among them is not a negative) and corrections
    ``extra_log_q`` [M] on the same scale as ``log_q``.
    """
    logits = user @ item.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same_item = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    same_item.fill_diagonal_(False)
    logits = logits.masked_fill(same_item, torch.finfo(logits.dtype).min)
    if extra_negatives is not None and extra_negatives.numel():
        extra = user @ extra_negatives.T / temperature
        if extra_log_q is not None:
            extra = extra - extra_log_q.unsqueeze(0)
        if extra_idx is not None:
            extra = extra.masked_fill(item_idx.unsqueeze(1) == extra_idx.unsqueeze(0), torch.finfo(extra.dtype).min)
        logits = torch.cat([logits, extra], dim=1)
    labels = torch.arange(user.shape[0], device=user.device)
    return F.cross_entropy(logits, labels)


def multi_task_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy summed over task heads (columns), averaged over rows."""
    loss = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    if weights is not None:
        loss = loss * weights
    return loss.sum(-1).mean()


def distillation_bce(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, share: float,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """``multi_task_bce`` against a blend: ``share`` of it against the teacher's probabilities (soft
    targets, Hinton et al. 2015), the rest against the labels. A pruned student fine-tuned this way
    keeps the dense teacher's ranking instead of drifting from it on one more pass over the labels."""
    hard = multi_task_bce(logits, labels, weights)
    if share <= 0:
        return hard
    soft = multi_task_bce(logits, torch.sigmoid(teacher_logits.detach().float()), weights)
    return (1 - share) * hard + share * soft
