from __future__ import annotations

import torch

from rayrec.models.losses import in_batch_softmax_loss, mixed_log_q
from rayrec.models.two_tower import TwoTowerModel, TwoTowerSpec
from tests.unit.models.conftest import N_ITEMS

SPEC = TwoTowerSpec(n_items=N_ITEMS, n_users=10, n_categories=20, n_brands=8, n_price_buckets=6, n_tokens=40, title_tokens=4,
                    history_length=5, dim=16, hidden=32, heads=2)


def _history(batch: int, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, N_ITEMS, (batch, length), generator=g)
    items[0] = 0  # a user with no history at all (cold start)
    items[1, :3] = 0  # right-aligned partial history
    types = torch.where(items > 0, torch.randint(1, 5, items.shape, generator=g), 0)
    gaps = torch.where(items > 0, torch.randint(1, 20, items.shape, generator=g), 0)
    return items, types, gaps


def test_towers_give_normalised_vectors_of_the_configured_size(items):
    model = TwoTowerModel(SPEC, items).eval()
    h = _history(6)
    user, item = model(*h, None, torch.arange(2, 8))
    assert user.shape == (6, 16) and item.shape == (6, 16)
    assert torch.allclose(user.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert torch.isfinite(user).all()  # the empty history still gets a (cold-start) vector
    assert model.all_item_embeddings().shape == (N_ITEMS, 16)


def test_new_items_get_an_embedding_from_content_alone(items):
    model = TwoTowerModel(SPEC, items).eval()
    tower = model.item_tower
    zero_id = torch.zeros(2, 16)
    content = tower.embed_content(zero_id, torch.as_tensor(items.categories[[3, 4]]), torch.as_tensor(items.brand[[3, 4]]),
                                  torch.as_tensor(items.price_bucket[[3, 4]]), torch.as_tensor(items.title[[3, 4]]))
    assert content.shape == (2, 16) and not torch.allclose(content[0], content[1])


def test_loss_decreases_on_a_fixed_dataset(items):
    torch.manual_seed(0)
    model = TwoTowerModel(SPEC, items, id_dropout=0.0)
    h = _history(64, seed=1)
    target = (h[0][:, -1] % (N_ITEMS - 2)) + 2  # learnable: a function of the last item
    target[0] = 5
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(60):
        user, item = model(*h, None, target)
        loss = in_batch_softmax_loss(user, item, target, model.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_logq_correction_changes_the_loss_and_masks_repeated_items():
    torch.manual_seed(0)
    user = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([2, 3, 4, 5])
    t = torch.tensor(0.1)
    plain = in_batch_softmax_loss(user, item, ids, t)
    uniform_q = in_batch_softmax_loss(user, item, ids, t, log_q=torch.full((4,), -2.0))
    skewed_q = in_batch_softmax_loss(user, item, ids, t, log_q=torch.tensor([-0.1, -5.0, -5.0, -5.0]))
    assert torch.isclose(plain, uniform_q)  # a constant correction is no correction
    assert not torch.isclose(plain, skewed_q)
    # hand check of row 0 with log-Q: logits_j = u0.v_j / t - logq_j
    logq = torch.tensor([-0.1, -5.0, -5.0, -5.0])
    logits = (user @ item.T / t - logq)
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    assert torch.isclose(skewed_q, expected)
    # the same item twice in a batch is not its own negative
    dup = in_batch_softmax_loss(user, item[[0, 0, 2, 3]], torch.tensor([2, 2, 4, 5]), t)
    logits = user @ item[[0, 0, 2, 3]].T / t
    logits[0, 1] = logits[1, 0] = torch.finfo(logits.dtype).min
    assert torch.isclose(dup, torch.nn.functional.cross_entropy(logits, torch.arange(4)))


def test_uniform_negatives_are_corrected_by_the_mixture_and_never_the_rows_own_item():
    torch.manual_seed(0)
    user = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    extra = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    ids, extra_ids, t = torch.tensor([2, 3, 4]), torch.tensor([3, 6]), torch.tensor(0.1)
    prob = torch.tensor([0.0, 0.0, 0.5, 0.3, 0.1, 0.05, 0.05], dtype=torch.float64)
    log_q = mixed_log_q(prob, batch_size=3, uniform=2, n_items=5)
    # per in-batch draw: p + M / (B N), so an item's two ways into the negatives add up
    assert torch.allclose(log_q, torch.log(prob + 2 / 15).float())
    assert torch.allclose(mixed_log_q(prob[2:], 3, 0, 5), torch.log(prob[2:]).float())
    loss = in_batch_softmax_loss(user, item, ids, t, log_q[ids], extra, extra_ids, log_q[extra_ids])
    logits = torch.cat([user @ item.T / t - log_q[ids], user @ extra.T / t - log_q[extra_ids]], dim=1)
    logits[1, 3] = torch.finfo(logits.dtype).min  # row 1's own item (3) drawn as an extra negative
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(logits, torch.arange(3)))
    # uncorrected extras would sit log(1/q) lower than the in-batch logits: a different loss
    assert not torch.isclose(loss, in_batch_softmax_loss(user, item, ids, t, log_q[ids], extra, extra_ids))
