"""`Ranker`: scores (user, candidate) pairs with a DCN-v2 cross network and click/purchase heads.

Why DCN-v2 and not DIN-style target attention: the ranker runs on every retrieved candidate of
every request on CPU. DIN attends over the L history items once per candidate (cost ~ C·L·d per
request); here the history is read once, by the retrieval user tower, and enters as one user
vector plus cheap user-item affinity counts, so a candidate costs a few small matrix products.
The cross layers learn the explicit feature crosses (user vector × candidate category, price ×
price level) that target attention would otherwise approximate, and their dense, low-rank weight
matrices are what structured pruning can really shrink.

Inputs per candidate: the user vector and retrieval score from the retrieval model; candidate
id, leaf category, brand and price-bucket embeddings; item popularity over the training period
and its interactions in the last days before the request (``features.trend``: what sells this
week, which overall popularity cannot say); and affinities computed
here from the raw history so serving and training share them: how often and how recently the user
touched this item, its leaf and top category and its brand, and its price relative to the prices
the user looked at (and, ``category_price``, relative to its category's, against the user's usual
level within categories); and (``title_affinity``) how much of the candidate's title the user's recent items
share, word by word and weighted by rarity: the affinity a shop without a category tree or brands
still has (Online Retail: product lines such as "... RED RETROSPOT" are bought together).

Beside the learned probabilities the score can add two fitted terms (``Ranker.score``): the trend
boost, and (``collaborative_factors``) the candidates' ALS preference for the user's folded-in history
(``models.collaborative``), from the item factors the ranker carries as a buffer saved with its weights.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from rayrec.features.items import ItemFeatureTable
from rayrec.models.collaborative import collaborative_scores, regularized_gram

# The dense inputs in x0's order (after the user vector and the four embeddings); the optional ones,
# appended in this order when the spec turns them on, are what structured pruning can remove whole.
BASE_INPUTS = ("retrieval_score", "trend", "popularity", "item_share", "item_recency", "same_leaf",
               "same_top_category", "same_brand", "relative_price", "price_known", "history_fill")
# Keyed by the RankerSpec flag that turns each group on (and CompressConfig's drop_<flag> removes).
OPTIONAL_INPUTS = {"title_affinity": ("title_anywhere", "title_mean"), "category_price": ("leaf_relative_price",)}
N_DENSE = len(BASE_INPUTS)
# Buffers holding fitted data, not learned weights (Ranker.set_collaborative_items); saved with the weights.
COLLABORATIVE_BUFFERS = ("collaborative_items", "collaborative_gram")
HEADS = ("click", "purchase")


@dataclass(frozen=True)
class RankerSpec:
    n_items: int
    n_categories: int
    n_brands: int
    n_price_buckets: int
    user_dim: int
    dim: int = 16
    cross_layers: int = 2
    cross_rank: int = 32
    deep_layers: list[int] = field(default_factory=lambda: [128, 64])
    trend_window_days: float = 7.0  # what the trend_counts input counts (features.trend)
    trend_boost: float = 0.0  # weight of the log trend count added to the score (see Ranker.score)
    title_affinity: bool = False  # read Ranker.title_affinities (False: bundles saved before it existed)
    category_price: bool = False  # the leaf-relative price input (False: bundles saved before it existed)
    collaborative_factors: int = 0  # width of the ALS item factors the score can add (0: none)
    collaborative_boost: float = 0.0  # weight of the ALS score added to the score (see Ranker.score)

    @property
    def dense_inputs(self) -> tuple[str, ...]:
        """Names of the dense inputs, in x0's order."""
        return BASE_INPUTS + tuple(name for group, names in OPTIONAL_INPUTS.items() if getattr(self, group)
                                   for name in names)

    @property
    def n_dense(self) -> int:
        return len(self.dense_inputs)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (U (V x_l) + b) + x_l, the low-rank DCN-v2 cross."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.up(self.down(x)) + x


class Ranker(nn.Module):
    def __init__(self, spec: RankerSpec, items: ItemFeatureTable) -> None:
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.item_emb = nn.Embedding(spec.n_items, d, padding_idx=0)
        self.cat_emb = nn.Embedding(spec.n_categories, d, padding_idx=0)
        self.brand_emb = nn.Embedding(spec.n_brands, d, padding_idx=0)
        self.price_emb = nn.Embedding(spec.n_price_buckets, d, padding_idx=0)
        width = spec.user_dim + 4 * d + spec.n_dense
        self.norm = nn.LayerNorm(width)
        self.cross = nn.ModuleList([CrossLayer(width, spec.cross_rank) for _ in range(spec.cross_layers)])
        layers: list[nn.Module] = []
        prev = width
        for w in spec.deep_layers:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(prev, len(HEADS))
        pop = torch.tensor(items.popularity, dtype=torch.float32)
        self.register_buffer("pop_scale", torch.log1p(pop.max()).clamp(min=1.0), persistent=False)
        self.register_buffer("log_pop", torch.log1p(pop) / self.pop_scale, persistent=False)
        self.register_buffer("categories", torch.tensor(items.categories, dtype=torch.long), persistent=False)
        self.register_buffer("brand", torch.tensor(items.brand, dtype=torch.long), persistent=False)
        self.register_buffer("price_bucket", torch.tensor(items.price_bucket, dtype=torch.long), persistent=False)
        log_price = torch.log(torch.tensor(items.price, dtype=torch.float32))
        price_known = torch.isfinite(log_price).float()
        price_known[0] = 0.0  # the padding item: history slots without an item hold no price
        self.register_buffer("price_known", price_known, persistent=False)
        # The per-item log-price measures relative_to_history compares: the log price and
        # (category_price) the log price over the leaf category's mean (leaf_relative).
        levels = [torch.nan_to_num(log_price, nan=0.0, posinf=0.0, neginf=0.0)]
        if spec.category_price:
            levels.append(leaf_relative(levels[0], price_known, self.categories[:, 2]))
        self.register_buffer("price_levels", torch.stack(levels, -1), persistent=False)
        cand_slots, hist_slots, self.n_slots = group_slots(self.categories, self.brand)
        self.register_buffer("cand_slots", cand_slots, persistent=False)
        self.register_buffer("hist_slots", hist_slots, persistent=False)
        if spec.title_affinity:  # sorting and counting every title is start-up work only this input needs
            title, idf = title_words(torch.tensor(items.title, dtype=torch.long))
            self.register_buffer("title", title, persistent=False)
            weight = idf[title]  # padding weighs 0
            # Each title word's share of its title's weight: what title_affinities sums per candidate.
            share = weight / weight.sum(-1, keepdim=True).clamp(min=1e-6)
            self.register_buffer("title_share", share, persistent=False)
            self.title_vocab = len(idf)
        if spec.collaborative_factors:  # set_collaborative_items fills both; saved with the weights
            self.register_buffer("collaborative_items", torch.zeros(spec.n_items, spec.collaborative_factors))
            self.register_buffer("collaborative_gram", torch.zeros(spec.collaborative_factors,
                                                                   spec.collaborative_factors))
        # Set by inference_graph while tracing: every item's candidate_embeddings, read with one lookup.
        self.frozen_candidates: torch.Tensor | None = None

    def affinities(self, hist_items: torch.Tensor, hist_gaps_s: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """[B, C, n_dense - 2] user-item features from the raw history: every dense input but the
        retrieval score and the trend (``title_affinities`` and ``category_price`` last, when on)."""
        b = hist_items.shape[0]
        real = hist_items > 0
        n_hist = real.sum(-1, keepdim=True).clamp(min=1).float()  # [B, 1]
        # The same item: compared pair by pair, [B, C, L], which also gives the last touch. The same
        # leaf, top category or brand: counted once per history in a histogram over those (few) keys,
        # then read per candidate; comparing them pair by pair too, [B, C, 3, L], was the costliest
        # feature of a batch of requests.
        same_item = cand.unsqueeze(-1) == torch.where(real, hist_items, -1).unsqueeze(1)
        item_share = same_item.sum(-1, keepdim=True).float() / n_hist.unsqueeze(-1)  # [B, C, 1]
        groups = counts_in_history(self.hist_slots[hist_items].reshape(b, -1), self.cand_slots[cand], self.n_slots)
        big = torch.full_like(hist_gaps_s, 1e9).unsqueeze(1)
        last_touch = torch.where(same_item, hist_gaps_s.unsqueeze(1), big).amin(-1)  # seconds since last touch
        recency = torch.log1p(last_touch.clamp(max=1e9)) / torch.log1p(torch.tensor(1e9))
        rel_price, price_known = self.relative_to_history(hist_items, cand)
        history_fill = (n_hist / hist_items.shape[1]).expand_as(price_known)
        parts = [self.log_pop[cand].unsqueeze(-1), item_share, recency.unsqueeze(-1), groups / n_hist.unsqueeze(-1),
                 rel_price[..., :1], torch.stack([price_known, history_fill], -1)]
        if self.spec.title_affinity:
            parts.append(self.title_affinities(hist_items, cand, n_hist))
        if self.spec.category_price:
            parts.append(rel_price[..., 1:])
        return torch.cat(parts, dim=-1)

    def title_affinities(self, hist_items: torch.Tensor, cand: torch.Tensor, n_hist: torch.Tensor) -> torch.Tensor:
        """[B, C, 2]: of each candidate's title (its words weighted by their idf: ``title_words``), the
        share found anywhere in the titles of the user's history, and the share one history item's title
        holds on average (``n_hist`` [B, 1]: the user's real history items, at least 1). 0 for candidates
        without a title and users without history."""
        b = hist_items.shape[0]
        # How many history titles hold each word: a histogram over the shared words per row (titles
        # hold each word once: title_words). A pairwise comparison of words ([B, C, T, L, T]) doubled
        # a request's latency, binary searches in the sorted history words still cost +30%.
        count = counts_in_history(self.title[hist_items].reshape(b, -1), self.title[cand], self.title_vocab)
        share = self.title_share[cand]  # [B, C, T], as count
        anywhere = (share * (count > 0)).sum(-1)
        mean = (share * count).sum(-1) / n_hist
        return torch.stack([anywhere, mean], dim=-1)

    def relative_to_history(self, hist_items: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, C, k] each of the candidate's k ``price_levels`` minus its mean over the user's history
        items with a known price, clamped to ±3; [B, C] 1 where both are known) — 0 otherwise. Level 0,
        the plain price input, compares log prices across categories whose price levels differ; level 1
        (``category_price``) compares how dear an item is for its category with what the user picks."""
        known = self.price_known[hist_items].unsqueeze(-1)  # [B, L, 1]; padding: price unknown
        n_known = known.sum(1)  # [B, 1]
        user_level = (self.price_levels[hist_items] * known).sum(1) / n_known.clamp(min=1)  # [B, k]
        both = self.price_known[cand] * (n_known > 0).float()
        return (self.price_levels[cand] - user_level.unsqueeze(1)).clamp(-3, 3) * both.unsqueeze(-1), both

    def set_collaborative_items(self, item_factors: torch.Tensor) -> None:
        """Stores ALS item factors [n_items, collaborative_factors] (``train.collaborative``) for ``score``."""
        self.collaborative_items.copy_(item_factors)
        self.collaborative_gram.copy_(regularized_gram(self.collaborative_items))

    def candidate_embeddings(self, cand: torch.Tensor) -> torch.Tensor:
        """[B, C, 4 * dim]: the candidates' item, leaf category, brand and price-bucket embeddings."""
        if self.frozen_candidates is not None:
            return self.frozen_candidates[cand]
        return torch.cat([self.item_emb(cand), self.cat_emb(self.categories[cand][..., 2]),
                          self.brand_emb(self.brand[cand]), self.price_emb(self.price_bucket[cand])], dim=-1)

    def forward(self, user_vec: torch.Tensor, hist_items: torch.Tensor, hist_gaps_s: torch.Tensor,
                cand: torch.Tensor, retrieval_score: torch.Tensor, trend_counts: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, 2] (click, purchase) for candidates ``cand`` [B, C]; ``trend_counts`` [B, C]
        are the candidates' interactions in the trend window before the request."""
        b, c = cand.shape
        trend = torch.log1p(trend_counts.float()) / self.pop_scale
        x0 = torch.cat([
            user_vec.unsqueeze(1).expand(b, c, -1), self.candidate_embeddings(cand), retrieval_score.unsqueeze(-1),
            trend.unsqueeze(-1), self.affinities(hist_items, hist_gaps_s, cand),
        ], dim=-1)  # fmt: skip
        x0 = self.norm(x0)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(self.deep(x))

    def score(self, logits: torch.Tensor, trend_counts: torch.Tensor, purchase_weight: float,
              hist_items: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """The ranking score: P(click) + purchase_weight * P(purchase) + trend_boost * the candidates'
        trend feature (log1p(count) on the popularity scale, as ``forward`` reads it) + collaborative_boost
        * the candidates' ALS score for the history ``hist_items`` (``models.collaborative``).

        Why a boost beside the learned trend input: trained on the retrieval top-K and random items,
        the ranker rarely meets trending items as negatives and under-weights the trend among the
        candidates it serves (retrieval + trending). The right weight depends on the shop (Online Retail
        wants a small one, MovieLens a large one), so training fits it per dataset on validation
        (``train.systems.fit_boosts``). The collaborative boost is fitted the same way, after it."""
        p = torch.sigmoid(logits)
        s = p[..., 0] + purchase_weight * p[..., 1]
        if self.spec.trend_boost:
            s = s + self.spec.trend_boost * torch.log1p(trend_counts.float()) / self.pop_scale
        if self.spec.collaborative_boost and self.spec.collaborative_factors:
            s = s + self.spec.collaborative_boost * collaborative_scores(
                self.collaborative_items, self.collaborative_gram, hist_items, cand)
        return s


def leaf_relative(log_price: torch.Tensor, known: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """Each item's ``log_price`` minus the mean log price of the priced items of its ``leaf`` category
    (0 where the price is unknown, ``known`` 0): the price level within the category."""
    n_leaves = int(leaf.max()) + 1 if leaf.numel() else 1
    total = torch.zeros(n_leaves, dtype=log_price.dtype).index_add_(0, leaf, log_price * known)
    count = torch.zeros(n_leaves, dtype=log_price.dtype).index_add_(0, leaf, known)
    return (log_price - total[leaf] / count[leaf].clamp(min=1)) * known


def counts_in_history(history_keys: torch.Tensor, candidate_keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """How often each of ``candidate_keys`` [B, C, k] occurs among its row's ``history_keys`` [B, m] (keys
    in [0, n_keys)), as float [B, C, k]: one histogram per row, read per candidate."""
    b = history_keys.shape[0]
    held = torch.zeros(b, n_keys, device=history_keys.device)
    held.scatter_add_(1, history_keys, torch.ones_like(history_keys, dtype=held.dtype))
    return held.gather(1, candidate_keys.reshape(b, -1)).reshape(candidate_keys.shape)


def group_slots(categories: torch.Tensor, brand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per item, the histogram slots of its (leaf category, top category, brand) that
    ``Ranker.affinities`` counts a history in and reads a candidate from, [N, 3] each, and the number
    of slots: leaves at their category id, top categories after them, brands after those. A history
    item without a brand and the padding item (0) count in a slot no candidate reads; a candidate
    without a brand reads a slot no history writes (the last): an unknown brand matches nothing."""
    n_categories = int(categories.max()) + 1 if categories.numel() else 1
    n_brands = int(brand.max()) + 1 if brand.numel() else 1
    cand = torch.stack([categories[:, 2], n_categories + categories[:, 0], 2 * n_categories + brand], dim=-1)
    unused = 2 * n_categories + n_brands  # written by history, read by no candidate
    hist = cand.clone()
    hist[:, 2] = torch.where(brand > 0, hist[:, 2], torch.full_like(brand, unused))
    hist[0] = unused
    cand[:, 2] = torch.where(brand > 0, cand[:, 2], torch.full_like(brand, unused + 1))
    return cand, hist, unused + 2


def title_words(title: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The catalog's titles as ``Ranker.title_affinities`` reads them: ``title`` [N, T] as a bag of words
    (sorted, each word once per title) renumbered 1..K over the words at least two titles share, and
    each word's inverse document frequency [K + 1], log(titled items / (1 + titles with the word))
    floored at 0, so common words ("SET", "OF") count little and a product line's name much; padding
    (0) weighs 0. A word of one title can only match that item itself, which the same-item affinity
    already counts; leaving those out keeps the per-request histogram at K words, not the vocabulary."""
    words = title.sort(-1).values
    repeat = torch.zeros_like(words, dtype=torch.bool)
    repeat[:, 1:] = words[:, 1:] == words[:, :-1]
    words = words.masked_fill(repeat, 0)
    vocab = int(words.max()) + 1 if words.numel() else 1
    df = torch.bincount(words[words > 0], minlength=vocab)
    shared = df >= 2
    shared[0] = False
    renumber = torch.cumsum(shared.long(), 0) * shared
    titled = float((words > 0).any(-1).sum())
    idf = torch.log(max(titled, 1.0) / (1.0 + df[shared].float())).clamp(min=0.0)
    return renumber[words], torch.cat([torch.zeros(1), idf])


def inference_graph(model: Ranker) -> torch.jit.ScriptModule:
    """``model`` traced and frozen for inference (TorchScript): the same scores without Python's cost
    per operator, which is most of a 100-candidate request on CPU (measured: 1.06 → 0.61 ms for the
    demo ranker, one thread), and the candidates' embeddings read from one precomputed table. Batch,
    candidate and history sizes stay free; works for int8-quantized rankers too. The model is put in
    eval mode."""
    model.eval()
    spec = model.spec
    device = model.log_pop.device
    b, c, length = 2, 3, 4
    example = (torch.zeros(b, spec.user_dim, device=device), torch.full((b, length), 2, device=device),
               torch.ones(b, length, device=device), torch.full((b, c), 2, device=device),
               torch.zeros(b, c, device=device), torch.zeros(b, c, device=device))
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.compile, which needs a C++ toolchain and compiles
        # for seconds per shape; tracing is instant and exact here (tests compare the scores).
        warnings.simplefilter("ignore")
        # The trained embeddings of every item as one table: a candidate's four lookups become one.
        model.frozen_candidates = model.candidate_embeddings(torch.arange(spec.n_items, device=device))
        try:
            return torch.jit.freeze(torch.jit.trace(model, example))
        finally:
            model.frozen_candidates = None
