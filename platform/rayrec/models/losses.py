"""Retrieval and ranking losses.

In-batch sampled softmax: every other positive in the batch is a negative. Popular items appear
as negatives far more often than uniform sampling would have them, so their scores get pushed
down too much; the log-Q correction (Yi et al., RecSys 2019) subtracts log(sampling probability)
from each logit to undo that bias. Extra uniformly drawn negatives have the same probability each,
so their correction is a constant and they need none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    item_idx: torch.Tensor,
    temperature: torch.Tensor,
    log_q: torch.Tensor | None = None,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each user against its own item among the batch's items.

    user, item: [B, d] normalised; item_idx: [B] ids (a repeat of the row's own item elsewhere in
    the batch is not a negative); log_q: [B] log sampling probability of each row's item;
    extra_negatives: [M, d] item embeddings shared by all rows.
    """
    logits = user @ item.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same_item = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    same_item.fill_diagonal_(False)
    logits = logits.masked_fill(same_item, torch.finfo(logits.dtype).min)
    if extra_negatives is not None and extra_negatives.numel():
        logits = torch.cat([logits, user @ extra_negatives.T / temperature], dim=1)
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
