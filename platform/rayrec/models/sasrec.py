"""`SASRecModel`: a causal transformer over a user's item sequence (Kang & McAuley 2018).

Each position reads the items up to and including itself (a causal mask) and its output, dotted with
the shared item embeddings, scores every catalog item as the next one. Trained with the full softmax
over the catalog (cross-entropy at every position), which beats the paper's sampled binary loss in
later replications (Petrov & Macdonald 2022) and needs no negative sampling on catalogs this size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from rayrec.features.vocab import PAD_ID, UNK_ID

MASKED = -1e9


@dataclass(frozen=True)
class SASRecSpec:
    """Sizes that fix the parameter shapes."""

    n_items: int
    max_length: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class SASRecModel(nn.Module):
    """Item sequences ``[B, L]`` (right-aligned, 0 = padding) → next-item logits per position."""

    def __init__(self, spec: SASRecSpec) -> None:
        super().__init__()
        self.spec = spec
        self.items = nn.Embedding(spec.n_items, spec.dim, padding_idx=PAD_ID)
        self.positions = nn.Embedding(spec.max_length, spec.dim)
        layer = nn.TransformerEncoderLayer(spec.dim, spec.heads, dim_feedforward=spec.dim * 2, dropout=spec.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(spec.dim)
        self.dropout = nn.Dropout(spec.dropout)
        nn.init.normal_(self.items.weight, std=spec.dim**-0.5)
        with torch.no_grad():
            self.items.weight[PAD_ID].zero_()
        # Additive masks with a large finite negative, not -inf: a query whose keys are all masked (a
        # padding slot) then averages them instead of turning into NaN, which would reach every later
        # position through the next layer's matmul (0 x NaN).
        causal = torch.triu(torch.full((spec.max_length, spec.max_length), MASKED), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def hidden(self, sequences: torch.Tensor) -> torch.Tensor:
        """``[B, L, dim]`` outputs; position t has read positions <= t only."""
        length = sequences.shape[1]
        pad = sequences == PAD_ID
        x = self.items(sequences) * self.spec.dim**0.5 + self.positions.weight[-length:]
        x = self.dropout(x) * (~pad).unsqueeze(-1)
        padding = torch.zeros(pad.shape, dtype=x.dtype).masked_fill(pad, MASKED)
        h = self.encoder(x, mask=self.causal[-length:, -length:], src_key_padding_mask=padding)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each hidden state; the padding and unknown ids never win."""
        out = hidden @ self.items.weight.T
        out[..., PAD_ID] = -torch.inf
        out[..., UNK_ID] = -torch.inf
        return out

    def next_item_logits(self, sequences: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]``: the scores after the newest item of each sequence."""
        return self.logits(self.hidden(sequences)[:, -1])
