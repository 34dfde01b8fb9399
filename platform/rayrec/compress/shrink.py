"""Structured pruning that really shrinks tensors: a smaller `Ranker` (or `TwoTowerModel`) with the
weights of the units it keeps.

The result is built from a smaller spec by the model's own constructor, so it saves and loads
like any trained model (``Ranker(RankerSpec(**meta["spec"]), items)``) and needs no special code
in training, evaluation or serving. Units are ranked by magnitude, the classic heuristic: a hidden
unit by ‖incoming weights‖₂ × ‖outgoing weights‖₂, a cross layer's rank dimension by ‖row of
``down``‖₂ × ‖column of ``up``‖₂. Kept units keep their order, so ratio 0 is an exact copy.

Removing an optional input group (``ShrinkRatios.inputs``, e.g. the title affinities) drops its x0
columns like any unit, and the smaller spec turns the group off, so the per-request work computing
it goes too. That work, not the layers' width, is most of one request's latency (demo ranker, one
request of 100 candidates: the MLP ~35%; the title affinities alone ~15%).

Shrinking ``embedding_dim`` is the one cut that is not a pure deletion: x0 (user vector, four
embeddings, dense features) passes a LayerNorm over its whole width before the cross layers
multiply it elementwise, so dropping columns changes the mean and variance every remaining column
is normalised by. Fine-tuning after shrinking (a few epochs at a low learning rate) is expected,
for every part in fact, since the removed units did carry signal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from rayrec.compress.prune import is_reparametrised
from rayrec.features.items import ItemFeatureTable
from rayrec.models.ranker import OPTIONAL_INPUTS, Ranker, RankerSpec
from rayrec.models.two_tower import TwoTowerModel

EMBEDDING_TABLES = ("item_emb", "cat_emb", "brand_emb", "price_emb")  # x0 order after the user vector


@dataclass(frozen=True)
class ShrinkRatios:
    """Share of units to remove, per part of the Ranker: each in [0, 1); and optional input groups to
    remove whole."""

    deep: float = 0.0  # hidden units of every deep layer
    cross_rank: float = 0.0  # the low-rank dimension of every cross layer
    embedding_dim: float = 0.0  # columns of the four categorical embeddings (spec.dim)
    # Keys of models.ranker.OPTIONAL_INPUTS: their x0 columns go, and so does the work computing them
    # per request (the spec turns them off), which no width ratio can remove.
    inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("deep", "cross_rank", "embedding_dim"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ratio {name!r} must be in [0, 1), got {value}")
        unknown = sorted(set(self.inputs) - set(OPTIONAL_INPUTS))
        if unknown:
            raise ValueError(f"inputs {unknown} cannot be removed; removable inputs: {sorted(OPTIONAL_INPUTS)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "inputs": list(self.inputs)}


def kept_count(n: int, ratio: float) -> int:
    """Units left after removing ``ratio`` of ``n``; never zero, so every layer keeps a path."""
    return max(1, round(n * (1.0 - ratio)))


def top_units(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in their original order."""
    return torch.topk(scores, keep).indices.sort().values


def _unit_scores(incoming: torch.Tensor, outgoing: torch.Tensor) -> torch.Tensor:
    """Score of hidden unit j between two linear maps: ‖incoming[j, :]‖ × ‖outgoing[:, j]‖."""
    return incoming.detach().norm(dim=1) * outgoing.detach().norm(dim=0)


def _deep_linears(model: Ranker) -> list[nn.Linear]:
    return [m for m in model.deep if isinstance(m, nn.Linear)]


def _embedding_column_scores(model: Ranker) -> torch.Tensor:
    """[dim] importance of each shared embedding column: summed over the four tables, the column's
    RMS × its LayerNorm gain × the norm of every weight that reads that x0 position (first deep
    layer, each cross layer's ``down`` column and ``up`` row). A heuristic: the LayerNorm couples
    columns, so no score is exact."""
    spec = model.spec
    readers = _deep_linears(model)[0].weight.detach().norm(dim=0)
    for layer in model.cross:
        readers = readers + layer.down.weight.detach().norm(dim=0) + layer.up.weight.detach().norm(dim=1)
    per_position = model.norm.weight.detach().abs() * readers
    scores = torch.zeros(spec.dim)
    for t, table in enumerate(EMBEDDING_TABLES):
        rms = getattr(model, table).weight.detach().pow(2).mean(0).sqrt()
        start = spec.user_dim + t * spec.dim
        scores += (rms * per_position[start:start + spec.dim]).cpu()
    return scores


def _x0_positions(spec: RankerSpec, columns: torch.Tensor, dense_inputs: tuple[str, ...]) -> torch.Tensor:
    """Positions of ``spec``'s x0 kept when the embedding columns ``columns`` and the dense inputs
    ``dense_inputs`` are kept: all of the user vector, those columns of each of the four embeddings,
    those dense inputs."""
    parts = [torch.arange(spec.user_dim)]
    parts += [spec.user_dim + t * spec.dim + columns for t in range(len(EMBEDDING_TABLES))]
    start = spec.user_dim + 4 * spec.dim
    parts.append(torch.tensor([start + spec.dense_inputs.index(name) for name in dense_inputs], dtype=torch.long))
    return torch.cat(parts)


@torch.no_grad()
def _copy(target: nn.Parameter, source: torch.Tensor) -> None:
    target.copy_(source.detach())


def shrink_ranker(model: Ranker, ratios: ShrinkRatios, items: ItemFeatureTable) -> Ranker:
    """A new, smaller `Ranker` holding the kept units' weights; ``model`` is left untouched.

    ``items`` is the same item table the model was built with (its features live in non-persistent
    buffers that the constructor fills). Apply ``make_permanent`` first if the model carries
    pruning masks. Expect to fine-tune the result (see the module docstring)."""
    if is_reparametrised(model):
        raise ValueError("model carries pruning masks; call make_permanent(model) before shrinking")
    spec = model.spec
    columns = top_units(_embedding_column_scores(model), kept_count(spec.dim, ratios.embedding_dim))
    without = replace(spec, **{group: False for group in ratios.inputs})
    positions = _x0_positions(spec, columns, without.dense_inputs)
    rank = kept_count(spec.cross_rank, ratios.cross_rank)
    ranks = [top_units(_unit_scores(c.down.weight, c.up.weight).cpu(), rank) for c in model.cross]
    linears = _deep_linears(model)
    following = [*linears[1:], model.head]
    hidden = [top_units(_unit_scores(lin.weight, nxt.weight).cpu(), kept_count(lin.out_features, ratios.deep))
              for lin, nxt in zip(linears, following)]  # fmt: skip

    small = Ranker(replace(without, dim=len(columns), cross_rank=rank, deep_layers=[len(h) for h in hidden]), items)
    small = small.to(model.norm.weight.device)
    for table in EMBEDDING_TABLES:
        _copy(getattr(small, table).weight, getattr(model, table).weight[:, columns])
    _copy(small.norm.weight, model.norm.weight[positions])
    _copy(small.norm.bias, model.norm.bias[positions])
    for new, old, keep in zip(small.cross, model.cross, ranks):
        _copy(new.down.weight, old.down.weight[keep][:, positions])
        _copy(new.up.weight, old.up.weight[positions][:, keep])
        _copy(new.up.bias, old.up.bias[positions])
    inputs = positions
    for new, old, keep in zip(_deep_linears(small), linears, hidden):
        _copy(new.weight, old.weight[keep][:, inputs])
        _copy(new.bias, old.bias[keep])
        inputs = keep
    _copy(small.head.weight, model.head.weight[:, inputs])
    _copy(small.head.bias, model.head.bias)
    if spec.collaborative_factors:
        small.set_collaborative_items(model.collaborative_items)
    return small.train(model.training)


def structured_record(model: Ranker, ratios: ShrinkRatios, shrunk: Ranker) -> dict[str, Any]:
    """What goes into a bundle's ``meta["compression"]["structured"]``."""
    return {"kind": "structured", "ratios": ratios.to_dict(), "original_spec": model.spec.to_dict(),
            "spec": shrunk.spec.to_dict()}


# (input layer, output layer) state-dict prefixes of the three MLPs whose width is ``spec.hidden``: the
# item tower's MLP, the user tower's output MLP and the transformer's feed-forward block. Each is
# Linear → elementwise activation (→ dropout) → Linear, so a hidden unit can be removed cleanly.
HIDDEN_MLPS = (("item_tower.mlp.0", "item_tower.mlp.2"), ("user_tower.out.0", "user_tower.out.2"),
               ("user_tower.encoder.linear1", "user_tower.encoder.linear2"))


def shrink_two_tower(model: TwoTowerModel, hidden_ratio: float, items: ItemFeatureTable) -> TwoTowerModel:
    """A new `TwoTowerModel` with ``hidden_ratio`` of the hidden units removed from each of its three
    ``spec.hidden``-wide MLPs (they share that one spec field, so all three shrink by the same count,
    each keeping its own best units). ``spec.dim`` is left alone: it is tied to the shared item-id
    embedding, the attention heads (dim % heads) and the FAISS index width."""
    if not 0.0 <= hidden_ratio < 1.0:
        raise ValueError(f"hidden_ratio must be in [0, 1), got {hidden_ratio}")
    if is_reparametrised(model):
        raise ValueError("model carries pruning masks; call make_permanent(model) before shrinking")
    keep = kept_count(model.spec.hidden, hidden_ratio)
    state = model.state_dict()
    for first, second in HIDDEN_MLPS:
        w_in, w_out = state[f"{first}.weight"], state[f"{second}.weight"]
        units = top_units(_unit_scores(w_in, w_out).cpu(), keep).to(w_in.device)
        state[f"{first}.weight"], state[f"{first}.bias"] = w_in[units], state[f"{first}.bias"][units]
        state[f"{second}.weight"] = w_out[:, units]
    small = TwoTowerModel(replace(model.spec, hidden=keep), items, id_dropout=model.item_tower.id_dropout,
                          learn_temperature=model.log_temperature.requires_grad,
                          user_dropout=model.user_tower.user_dropout)  # fmt: skip
    small.load_state_dict(state)  # the temperature comes with the state
    return small.to(model.log_temperature.device).train(model.training)
