"""`TwoTowerModel`: the retrieval model, a user tower over recent history and a content-aware item tower.

Both towers end in L2-normalised vectors, so a dot product is a cosine and a FAISS inner-product
index serves them directly.

- Item tower: item id + category path (3 prefix levels) + brand + price bucket + mean of title
  tokens → MLP. During training the id embedding is dropped for a share of items (``id_dropout``)
  so the content path alone places items it never saw: a new item gets a usable embedding from
  ``embed_content``.
- User tower: the last L items (their id embeddings, shared with the item tower), event types and
  log-scaled time gaps, read by one transformer layer and pooled by attention from a learned query
  token that is always present, combined with a user-id embedding. A new user, or one with no
  history at all, gets the "unknown" user embedding and the query token's output: a learned
  cold-start vector that training pulls toward what new users engage with (popularity); their
  clicks move it at once through the history path.
  The user-id embedding (``use_user_id``) carries long-term taste beyond the last L events; ids are
  replaced by "unknown" for a share of training rows (``user_dropout``) so the cold path is trained
  too. It is off by default: on the demo data it overfit (valid Recall@20 0.079 with it, 0.084
  without, 3 epochs), and without it the model needs no retraining for new users.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.features.items import ItemFeatureTable
from rayrec.features.transforms import GAP_BUCKETS
from rayrec.features.vocab import UNK_ID

N_EVENT_TYPES = 5  # padding + view, click, add_to_cart, purchase (stage + 1)


@dataclass(frozen=True)
class TwoTowerSpec:
    """Sizes that fix the parameter shapes: saved with every checkpoint and checked on load."""

    n_items: int
    n_users: int
    n_categories: int
    n_brands: int
    n_price_buckets: int
    n_tokens: int
    title_tokens: int
    history_length: int
    dim: int = 64
    hidden: int = 128
    heads: int = 2
    use_user_id: bool = False

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class ItemTower(nn.Module):
    def __init__(self, spec: TwoTowerSpec, items: ItemFeatureTable, id_dropout: float) -> None:
        super().__init__()
        d = spec.dim
        self.id_dropout = id_dropout
        self.item_emb = nn.Embedding(spec.n_items, d, padding_idx=0)
        self.cat_emb = nn.Embedding(spec.n_categories, d, padding_idx=0)
        self.brand_emb = nn.Embedding(spec.n_brands, d, padding_idx=0)
        self.price_emb = nn.Embedding(spec.n_price_buckets, d, padding_idx=0)
        self.token_emb = nn.Embedding(spec.n_tokens, d, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(5 * d, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, d))
        self.register_buffer("categories", torch.tensor(items.categories, dtype=torch.long), persistent=False)
        self.register_buffer("brand", torch.tensor(items.brand, dtype=torch.long), persistent=False)
        self.register_buffer("price_bucket", torch.tensor(items.price_bucket, dtype=torch.long), persistent=False)
        self.register_buffer("title", torch.tensor(items.title, dtype=torch.long), persistent=False)

    def embed_content(self, id_vec: torch.Tensor, categories: torch.Tensor, brand: torch.Tensor,
                      price_bucket: torch.Tensor, title: torch.Tensor) -> torch.Tensor:
        """Embedding from an id vector (zeros for a new item) and content features."""
        tokens = self.token_emb(title)
        n_tokens = (title > 0).sum(-1, keepdim=True).clamp(min=1)
        parts = [id_vec, self.cat_emb(categories).sum(-2), self.brand_emb(brand), self.price_emb(price_bucket),
                 tokens.sum(-2) / n_tokens]  # fmt: skip
        return F.normalize(self.mlp(torch.cat(parts, -1)), dim=-1)

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        id_vec = self.item_emb(item_idx)
        if self.training and self.id_dropout > 0:
            keep = torch.rand(item_idx.shape, device=item_idx.device) >= self.id_dropout
            id_vec = id_vec * keep.unsqueeze(-1)
        return self.embed_content(id_vec, self.categories[item_idx], self.brand[item_idx],
                                  self.price_bucket[item_idx], self.title[item_idx])


class UserTower(nn.Module):
    def __init__(self, spec: TwoTowerSpec, item_emb: nn.Embedding, user_dropout: float) -> None:
        super().__init__()
        d = spec.dim
        self.user_dropout = user_dropout
        self.use_user_id = spec.use_user_id
        self.item_emb = item_emb  # shared with the item tower: one id space, fewer parameters
        self.user_emb = nn.Embedding(spec.n_users, d, padding_idx=0)
        self.type_emb = nn.Embedding(N_EVENT_TYPES, d, padding_idx=0)
        self.gap_emb = nn.Embedding(GAP_BUCKETS, d, padding_idx=0)
        self.pos_emb = nn.Parameter(torch.zeros(spec.history_length + 1, d))
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(d, spec.heads, dim_feedforward=spec.hidden, dropout=0.1,
                                                  batch_first=True, norm_first=True)
        self.out = nn.Sequential(nn.Linear(2 * d, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, d))

    def forward(self, hist_items: torch.Tensor, hist_types: torch.Tensor, hist_gaps: torch.Tensor,
                user_idx: torch.Tensor | None = None) -> torch.Tensor:
        """hist_*: [B, L] right-aligned, 0 = padding; types are stage + 1, gaps are gap_bucket ids;
        user_idx: [B] ids, UNK_ID (1) for users the vocabulary does not know (the default)."""
        if user_idx is None or not self.use_user_id:
            user_idx = torch.full_like(hist_items[:, 0], UNK_ID)
        elif self.training and self.user_dropout > 0:
            drop = torch.rand(user_idx.shape, device=user_idx.device) < self.user_dropout
            user_idx = torch.where(drop, torch.full_like(user_idx, UNK_ID), user_idx)
        x = self.item_emb(hist_items) + self.type_emb(hist_types) + self.gap_emb(hist_gaps)
        x = torch.cat([self.query.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_emb
        pad = torch.cat([torch.zeros_like(hist_items[:, :1], dtype=torch.bool), hist_items == 0], dim=1)
        h = self.encoder(x, src_key_padding_mask=pad)
        return F.normalize(self.out(torch.cat([h[:, 0], self.user_emb(user_idx)], -1)), dim=-1)


class TwoTowerModel(nn.Module):
    def __init__(self, spec: TwoTowerSpec, items: ItemFeatureTable, id_dropout: float = 0.1,
                 temperature: float = 0.07, learn_temperature: bool = True, user_dropout: float = 0.1) -> None:
        super().__init__()
        self.spec = spec
        self.item_tower = ItemTower(spec, items, id_dropout)
        self.user_tower = UserTower(spec, self.item_tower.item_emb, user_dropout)
        log_t = torch.tensor(float(temperature)).log()
        self.log_temperature = nn.Parameter(log_t, requires_grad=learn_temperature)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=0.01, max=1.0)

    def user_embedding(self, hist_items: torch.Tensor, hist_types: torch.Tensor, hist_gaps: torch.Tensor,
                       user_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.user_tower(hist_items, hist_types, hist_gaps, user_idx)

    def item_embedding(self, item_idx: torch.Tensor) -> torch.Tensor:
        return self.item_tower(item_idx)

    @torch.no_grad()
    def all_item_embeddings(self, batch: int = 8192) -> torch.Tensor:
        """[n_items, dim] for every item id (rows 0/1 are padding/unknown and never recommended)."""
        ids = torch.arange(self.spec.n_items, device=self.log_temperature.device)
        return torch.cat([self.item_tower(chunk) for chunk in ids.split(batch)])

    def forward(self, hist_items: torch.Tensor, hist_types: torch.Tensor, hist_gaps: torch.Tensor,
                user_idx: torch.Tensor | None, item_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding(hist_items, hist_types, hist_gaps, user_idx), self.item_embedding(item_idx)
