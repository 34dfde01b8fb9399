"""Deterministic synthetic e-commerce logs: rayrec's embedded default dataset (``rayrec generate``).

Owns the scale presets (``SCALES``) and ``generate()``, which writes under ``out_dir``:
``catalog.csv``, ``events/part-NNNNN.csv`` (up to about ``MAX_ROWS_PER_FILE`` rows each) and
``bad_rows.json``. Same seed and scale give byte-identical files.

The data carries signal a recommender can learn: Zipf-like item popularity; users with a few
favourite leaf categories (Dirichlet weights), brand affinities and a price level; tastes that drift
linearly towards one new category over the time span; sessions that browse one category and run a
view -> click -> add_to_cart -> purchase funnel (about 30% / 30% / 50%), some opening with a search
built from the words of the item then clicked (sometimes with a typo); and consumables (Grocery,
Beauty, Pet Supplies) whose favourite item a user buys again and again.

Bad rows: about 0.5% of event rows are *extra* copies of valid rows, each broken in exactly one
way, inserted at random places in the same file (so every valid row, and the funnel, stay intact).
Rates per kind, of the file's valid rows, with at least one row of every kind in every file:

    missing_user_id       0.08%  empty user_id (every third one whitespace-only)
    missing_item_id       0.06%  empty item_id on a non-search event
    unknown_event_type    0.06%  e.g. "wishlist", "CLICK!!"
    unparsable_timestamp  0.06%  e.g. "yesterday", "2024-13-45T99:00:00Z"
    future_timestamp      0.05%  the row's timestamp moved to the year 2096
    negative_price        0.05%  "-12.50" on an add_to_cart or purchase row
    unknown_item          0.06%  an item_id not in the catalog (I99xxxx)
    duplicate             0.08%  an exact copy of a valid row

The catalog gets one ``catalog_negative_price`` row (a new item id that no event uses) and one
``catalog_duplicate_item`` row (an existing item id again, with another title), both appended.
``bad_rows.json`` holds {kind: count} for all ten kinds plus ``total_rows``, the event rows written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayrec.schema import EVENT_TYPES, RAW_CATALOG_COLUMNS, RAW_EVENT_COLUMNS

MAX_ROWS_PER_FILE = 250_000
START = np.datetime64("2024-01-01T00:00:00", "s")


@dataclass(frozen=True)
class ScaleSpec:
    n_users: int
    n_items: int
    n_days: int
    sessions_per_user: float  # mean; per-user activity is lognormal around it
    users_per_file: int  # one file per this many users, sized to stay well under MAX_ROWS_PER_FILE
    views_per_session: float = 4.0
    search_rate: float = 0.3  # share of sessions that open with a search
    drift: float = 1.0  # scales every user's taste drift; 0 turns it off (a control for tests)


SCALES: dict[str, ScaleSpec] = {
    "tiny": ScaleSpec(n_users=60, n_items=80, n_days=30, sessions_per_user=14.0, users_per_file=60),
    "small": ScaleSpec(n_users=600, n_items=400, n_days=60, sessions_per_user=11.0, users_per_file=600),
    "demo": ScaleSpec(n_users=3000, n_items=1500, n_days=90, sessions_per_user=11.0, users_per_file=3000),
    "large": ScaleSpec(n_users=40000, n_items=20000, n_days=120, sessions_per_user=9.0, users_per_file=3000),
}


@dataclass
class GenerateSummary:
    out_dir: str
    n_items: int  # catalog items, not counting the two bad catalog rows
    n_users: int
    n_events: int  # event rows written, injected bad rows included (= bad_rows.json "total_rows")
    n_event_files: int
    bad_rows: dict[str, int]  # kind -> count injected (event and catalog kinds)


# top category -> (median price, consumable, brands, attribute words, title suffixes)
_TOPS: dict[str, tuple[float, bool, str, str, str]] = {
    "Home": (35.0, False, "Acme Hearthstone Norden Casaluna Kilnworks",
             "Stainless Ceramic Nonstick Oak Linen Cotton Classic Compact", "8in|2-Pack|Large|Set of 3"),
    "Electronics": (90.0, False, "Voltix Sonara Pixelon Corebyte Lumio",
                    "Wireless Portable Ultra Slim Pro Rugged Fast Smart", "64GB|128GB|2m|20W"),
    "Grocery": (6.0, True, "Harvestly Goldfield Brewhaus Nonna Greenleaf",
                "Organic Roasted Spicy Classic Salted Dark Italian Wholegrain", "500g|1kg|12-Pack|250ml"),
    "Beauty": (15.0, True, "Lumiere Velvra Purebloom Aurelle Dermaco",
               "Hydrating Gentle Matte Volumizing Unscented Nourishing Vitamin Waterproof", "50ml|200ml|3-Pack"),
    "Clothing": (30.0, False, "Northway Urbanite Silkroad Denimco Stride",
                 "Slim Relaxed Cotton Linen Waterproof Leather Vintage Stretch", "Size M|Size L|Navy|Black"),
    "Sports": (40.0, False, "Peakform Trailhead Ironcore Velox Summit",
               "Lightweight Adjustable Ultralight Foldable Durable Padded Carbon Insulated", "10kg|2-Person|30L"),
    "Toys": (25.0, False, "Funforge Wonderkin Tinytown Jollybox Brickly",
             "Classic Deluxe Wooden Mini Giant Rainbow Educational Glowing", "500 Pieces|Ages 3+|Set"),
    "Pet Supplies": (18.0, True, "Pawsome Whiskerly Barkley Aquafin Furrytail",
                     "Natural Salmon Chicken Senior Puppy Odorless Durable Grainfree", "2kg|12-Pack|5L|Large"),
}  # fmt: skip
# "Top | Sub: Leaf=Noun/Noun; ..." -- a leaf's nouns end item titles and seed search queries.
_TAXONOMY = """
Home | Kitchen: Knives=Chef Knife/Paring Knife/Knife Set; Cookware=Frying Pan/Saucepan/Dutch Oven; Small Appliances=Electric Kettle/Toaster/Blender
Home | Bedding: Sheets=Sheet Set/Pillowcase; Pillows=Memory Foam Pillow/Down Pillow; Blankets=Throw Blanket/Duvet
Home | Lighting: Lamps=Table Lamp/Floor Lamp; Bulbs=LED Bulb/Smart Bulb
Electronics | Audio: Headphones=Headphones/Earbuds; Speakers=Bluetooth Speaker/Soundbar
Electronics | Computers: Laptops=Laptop/Chromebook; Accessories=Mouse/Keyboard/USB Hub; Storage=SSD/Flash Drive/External Drive
Electronics | Phones: Cases=Phone Case/Screen Protector; Chargers=USB-C Charger/Power Bank/Charging Cable
Grocery | Beverages: Coffee=Ground Coffee/Coffee Beans/Coffee Pods; Tea=Green Tea/Black Tea/Herbal Tea
Grocery | Pantry: Pasta=Spaghetti/Penne; Sauces=Tomato Sauce/Pesto/Hot Sauce; Oils=Olive Oil/Coconut Oil
Grocery | Snacks: Chips=Potato Chips/Tortilla Chips; Bars=Protein Bar/Granola Bar; Nuts=Almonds/Mixed Nuts
Beauty | Skincare: Moisturizers=Face Cream/Night Cream; Cleansers=Face Wash/Micellar Water; Sun Care=Sunscreen/Aftersun Lotion
Beauty | Haircare: Shampoo=Shampoo/Dry Shampoo; Conditioner=Conditioner/Hair Mask
Beauty | Makeup: Lips=Lipstick/Lip Balm; Eyes=Mascara/Eyeliner
Clothing | Men: Shirts=Oxford Shirt/Polo Shirt/T-Shirt; Pants=Chinos/Jeans
Clothing | Women: Dresses=Maxi Dress/Wrap Dress; Tops=Blouse/Tank Top/Cardigan
Clothing | Shoes: Sneakers=Running Sneaker/Canvas Sneaker; Boots=Ankle Boot/Hiking Boot
Sports | Fitness: Yoga=Yoga Mat/Yoga Block; Weights=Dumbbell/Kettlebell/Resistance Band
Sports | Outdoor: Camping=Tent/Sleeping Bag/Camp Stove; Hiking=Backpack/Trekking Poles
Sports | Cycling: Bikes=Road Bike/Mountain Bike; Cycling Gear=Bike Helmet/Bike Light
Toys | Building: Blocks=Building Blocks/Magnetic Tiles; Models=Model Car/Model Train
Toys | Games: Board Games=Board Game/Card Game; Puzzles=Jigsaw Puzzle/Puzzle Cube
Toys | Plush: Stuffed Animals=Teddy Bear/Plush Bunny; Dolls=Fashion Doll/Baby Doll
Pet Supplies | Dogs: Dog Food=Dry Dog Food/Wet Dog Food; Dog Treats=Dental Chew/Jerky Treat; Dog Toys=Chew Toy/Rope Toy
Pet Supplies | Cats: Cat Food=Dry Cat Food/Wet Cat Food; Cat Litter=Clumping Litter/Litter Mat
Pet Supplies | Fish: Aquarium=Fish Tank/Aquarium Filter; Fish Food=Fish Flakes/Fish Pellets
"""
# (top, sub, leaf, nouns), in file order
_LEAVES: list[tuple[str, str, str, list[str]]] = [
    (*(p.strip() for p in path.split("|")), leaf.strip(), [n.strip() for n in nouns.split("/")])  # type: ignore[misc]
    for path, rest in (line.split(":", 1) for line in _TAXONOMY.strip().splitlines())
    for leaf, nouns in (part.split("=") for part in rest.split(";"))
]
_TOP_NAMES = list(_TOPS)
_BRANDS_PER_TOP = 5
_BRAND_SHARE = np.array([0.34, 0.25, 0.18, 0.13, 0.10])  # a market leader, then smaller brands
# Sessions by hour of day (UTC): quiet nights, a lunch bump, an evening peak.
_HOUR_W = np.array([2, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 6, 7, 6, 5, 5, 5, 6, 7, 8, 9, 8, 6, 4], float)

ITEM_ZIPF = 1.2  # exponent of item base popularity over a random rank
LEAF_ZIPF = 1.0  # category popularity is skewed too
BACKGROUND = 0.1  # share of sessions that wander outside a user's favourites
SIBLING_LOGW = np.log(0.1)  # sessions also browse the sibling leaves of their sub-category, less
PRICE_SD = 0.4  # how far (log scale) from a user's price level an item still appeals
MAX_VIEWS = 12
BLOCK_ROWS = 1024
REPLENISH = 0.6  # share of consumable sessions that go back to the user's staple item
CLICK, CART, BUY = 0.5, 0.22, 0.4  # CLICK is the ceiling of a liking-dependent click rate
STAPLE_CLICK, STAPLE_CART, STAPLE_BUY = 0.85, 0.7, 0.8
GAP_MEAN_S = 35.0

BAD_RATES: dict[str, float] = {
    "missing_user_id": 0.0008, "missing_item_id": 0.0006, "unknown_event_type": 0.0006,
    "unparsable_timestamp": 0.0006, "future_timestamp": 0.0005, "negative_price": 0.0005,
    "unknown_item": 0.0006, "duplicate": 0.0008,
}  # fmt: skip
CATALOG_BAD_KINDS = ("catalog_negative_price", "catalog_duplicate_item")
_SEARCH, _VIEW, _CLICK, _CART, _BUY = (EVENT_TYPES.index(t) for t in ("search", "view", "click", "add_to_cart", "purchase"))


@dataclass
class _Catalog:
    leaf: np.ndarray  # per item: leaf index
    brand: np.ndarray  # per item: global brand index
    logpop: np.ndarray
    rel_price: np.ndarray  # log(price / the leaf's median price)
    ids: np.ndarray  # item id strings, with a trailing "" so that index -1 (no item) maps to it
    prices: np.ndarray  # "12.99" strings, trailing "" likewise
    words: list[tuple[str, str, str, str]]  # per item: (brand, attribute, noun, leaf name) for queries
    rows: list[list[str]]
    leaf_prior: np.ndarray  # how likely a user favours each leaf
    leaf_sub: np.ndarray
    consumable: np.ndarray  # per leaf
    items_in_sub: list[np.ndarray]


@dataclass
class _Users:
    activity: np.ndarray
    fav: np.ndarray  # (n, 3) favourite leaves
    fav_cum: np.ndarray  # (n, 3) cumulative Dirichlet weights over them
    new_leaf: np.ndarray  # the leaf each user's taste drifts towards
    drift: np.ndarray  # share of sessions in new_leaf by the end of the span
    log_aff: np.ndarray  # (n, brands)
    price_level: np.ndarray


def _make_catalog(rng: np.random.Generator, n_items: int) -> _Catalog:
    n_leaves = len(_LEAVES)
    if n_items < n_leaves:
        raise ValueError(f"n_items must be >= {n_leaves} (one per leaf category)")
    leaf_pop = (rng.permutation(n_leaves) + 1.0) ** -LEAF_ZIPF
    size_p = np.sqrt(leaf_pop) / np.sqrt(leaf_pop).sum()  # popular categories also stock more items
    # one item per leaf first, so that every leaf a user may favour has something to show
    leaf = rng.permutation(np.concatenate([np.arange(n_leaves), rng.choice(n_leaves, n_items - n_leaves, p=size_p)]))
    subs = list(dict.fromkeys((t, s) for t, s, _, _ in _LEAVES))
    leaf_sub = np.array([subs.index((t, s)) for t, s, _, _ in _LEAVES])
    leaf_top = np.array([_TOP_NAMES.index(t) for t, _, _, _ in _LEAVES])
    leaf_median = np.array([_TOPS[t][0] for t, _, _, _ in _LEAVES]) * np.exp(rng.normal(0, 0.5, n_leaves))
    brand = leaf_top[leaf] * _BRANDS_PER_TOP + rng.choice(_BRANDS_PER_TOP, n_items, p=_BRAND_SHARE)
    price = np.maximum(0.5, np.round(leaf_median[leaf] * np.exp(rng.normal(0, 0.45, n_items)), 2))
    attr_pick, noun_pick, suffix_pick = rng.random((3, n_items))
    ids = [f"I{i + 1:06d}" for i in range(n_items)]
    rows, words = [], []
    for i in range(n_items):
        top, sub, leaf_name, nouns = _LEAVES[leaf[i]]
        _, _, brands, attrs, suffixes = _TOPS[top]
        b = brands.split()[brand[i] % _BRANDS_PER_TOP]
        a = attrs.split()[int(attr_pick[i] * len(attrs.split()))]
        noun = nouns[int(noun_pick[i] * len(nouns))]
        sfxs = suffixes.split("|")
        sfx = sfxs[int(suffix_pick[i] * 2 * len(sfxs))] if suffix_pick[i] < 0.5 else ""  # half have one
        title = " ".join(w for w in (b, a, noun, sfx) if w)
        rows.append([ids[i], title, f"{top} > {sub} > {leaf_name}", b, f"{price[i]:.2f}"])
        words.append((b, a, noun, leaf_name))
    return _Catalog(
        leaf=leaf, brand=brand, logpop=(-ITEM_ZIPF * np.log(rng.permutation(n_items) + 1.0)).astype(np.float32),
        rel_price=np.log(price / leaf_median[leaf]).astype(np.float32), ids=np.array([*ids, ""], dtype=object),
        prices=np.array([*(f"{p:.2f}" for p in price), ""], dtype=object), words=words, rows=rows,
        leaf_prior=leaf_pop / leaf_pop.sum(), leaf_sub=leaf_sub,
        consumable=np.array([_TOPS[t][1] for t, _, _, _ in _LEAVES]),
        items_in_sub=[np.flatnonzero(leaf_sub[leaf] == s) for s in range(len(subs))],
    )  # fmt: skip


def _make_users(rng: np.random.Generator, cat: _Catalog, spec: ScaleSpec) -> _Users:
    n, n_leaves = spec.n_users, len(_LEAVES)
    activity = rng.lognormal(0.0, 0.6, n)
    # Gumbel top-k: three distinct favourites per user, popular leaves more often
    keys = np.log(cat.leaf_prior)[None, :] + rng.gumbel(size=(n, n_leaves))
    order = np.argsort(-keys, axis=1)
    return _Users(
        activity=activity / activity.mean(), fav=order[:, :3],
        fav_cum=np.cumsum(rng.dirichlet(np.ones(3), n), axis=1), new_leaf=order[:, 3],
        drift=spec.drift * rng.uniform(0.4, 0.9, n),
        log_aff=rng.normal(0.0, 0.9, (n, len(_TOP_NAMES) * _BRANDS_PER_TOP)).astype(np.float32),
        price_level=rng.normal(0.0, 0.3, n).astype(np.float32),
    )  # fmt: skip


def _query(rng: np.random.Generator, words: tuple[str, str, str, str]) -> str:
    brand, attr, noun, leaf_name = words
    kind, typo, at = rng.random(3)
    parts = (noun if kind < 0.45 else f"{brand} {noun.split()[-1]}" if kind < 0.7
             else f"{attr} {noun}" if kind < 0.9 else leaf_name).lower().split()  # fmt: skip
    longest = max(range(len(parts)), key=lambda j: len(parts[j]))
    word = parts[longest]
    if typo < 0.1 and len(word) >= 6:  # swap two inner letters of the longest word, as fast typists do
        p = 1 + int(at * (len(word) - 3))
        parts[longest] = word[:p] + word[p + 1] + word[p] + word[p + 2 :]
    return " ".join(parts)


def _browse(rng: np.random.Generator, cat: _Catalog, users: _Users, idx: np.ndarray, uu: np.ndarray,
            leaf: np.ndarray, replenish: np.ndarray, n_views: np.ndarray) -> tuple[np.ndarray, ...]:
    """Items viewed in sessions idx (all of one sub-category): (session, item, rank, user's liking)."""
    # one dense (sessions x items of the sub-category) block, in float32 because it is the hot loop
    cand = cat.items_in_sub[cat.leaf_sub[leaf[0]]]
    top5 = cat.brand[cand[0]] // _BRANDS_PER_TOP * _BRANDS_PER_TOP
    taste = users.log_aff[uu, top5 : top5 + _BRANDS_PER_TOP][:, cat.brand[cand] - top5]
    taste -= np.square(cat.rel_price[cand][None, :] - users.price_level[uu][:, None]) * np.float32(0.5 / PRICE_SD**2)
    same_leaf = cat.leaf[cand][None, :] == leaf[:, None]
    score = taste + cat.logpop[cand][None, :]
    np.add(score, np.float32(SIBLING_LOGW), out=score, where=~same_leaf)
    # A user's staple in a leaf is the item they like best there: the same item every time,
    # which is what makes consumables repurchased without keeping per-user state.
    rep = np.flatnonzero(replenish)
    staple = np.argmax(np.where(same_leaf[rep], score[rep], -np.inf), axis=1)
    # Gumbel top-k = sampling k items without replacement, proportionally to exp(score)
    noise = rng.standard_exponential(score.shape, dtype=np.float32)
    score -= np.log(np.maximum(noise, np.float32(1e-30), out=noise), out=noise)  # float32 draws can be 0
    score[rep, staple] = np.inf
    k = min(MAX_VIEWS, cand.size)
    top = np.argpartition(score, cand.size - k, axis=1)[:, -k:]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, 1), axis=1), 1)
    shown = np.arange(k)[None, :] < np.minimum(n_views, k)[:, None]
    rank = np.broadcast_to(np.arange(k), top.shape)[shown]
    return idx[:, None].repeat(k, 1)[shown], cand[top][shown], rank, np.take_along_axis(taste, top, 1)[shown]


def _chunk_events(rng: np.random.Generator, cat: _Catalog, users: _Users, u0: int, u1: int, spec: ScaleSpec) -> list[np.ndarray]:
    """Event columns (RAW_EVENT_COLUMNS order, object arrays) for users u0..u1, in time order."""
    counts = 1 + rng.poisson(users.activity[u0:u1] * (spec.sessions_per_user - 1))
    su = np.repeat(np.arange(u0, u1), counts)
    n_sess, span = su.size, spec.n_days * 86400
    start = (rng.integers(0, spec.n_days, n_sess) * 86400 + rng.choice(24, n_sess, p=_HOUR_W / _HOUR_W.sum()) * 3600
             + rng.integers(0, 3600, n_sess))  # fmt: skip
    start = start[np.lexsort((start, su))]  # su is already sorted, so this numbers sessions in time
    number = np.arange(n_sess) - np.repeat(np.cumsum(counts) - counts, counts)
    # the session's category: a favourite, sometimes anything, increasingly the drift target
    fav_pick = np.minimum((rng.random(n_sess)[:, None] > users.fav_cum[su]).sum(1), 2)
    leaf = users.fav[su, fav_pick]
    wander = rng.random(n_sess) < BACKGROUND
    leaf[wander] = rng.choice(len(_LEAVES), int(wander.sum()), p=cat.leaf_prior)
    drifted = rng.random(n_sess) < users.drift[su] * start / span
    leaf[drifted] = users.new_leaf[su[drifted]]
    n_views = 1 + rng.poisson(spec.views_per_session - 1, n_sess)
    search = rng.random(n_sess) < spec.search_rate
    replenish = cat.consumable[leaf] & (rng.random(n_sess) < REPLENISH)

    parts: list[tuple[np.ndarray, ...]] = []
    sub = cat.leaf_sub[leaf]
    for s in np.unique(sub):
        rows = np.flatnonzero(sub == s)
        for block in np.array_split(rows, -(-rows.size // BLOCK_ROWS)):  # bounds the dense blocks' memory
            parts.append(_browse(rng, cat, users, block, su[block], leaf[block], replenish[block], n_views[block]))
    vs, vi, vr, vt = (np.concatenate(p) for p in zip(*parts))
    o = np.lexsort((vr, vs))
    vs, vi, vr, vt = vs[o], vi[o], vr[o], vt[o]

    n_v, staple_view = vs.size, replenish[vs] & (vr == 0)
    liking = np.exp(vt)
    clicked = rng.random(n_v) < np.where(staple_view, STAPLE_CLICK, CLICK * liking / (1 + liking))
    clicked |= search[vs] & (vr == 0)  # a search is followed by a click on what it found
    carted = clicked & (rng.random(n_v) < np.where(staple_view, STAPLE_CART, CART))
    bought = carted & (rng.random(n_v) < np.where(staple_view, STAPLE_BUY, BUY))
    qty = np.where(cat.consumable[cat.leaf[vi]], rng.geometric(0.6, n_v), 1 + (rng.random(n_v) < 0.05))

    first_item = np.full(n_sess, -1)
    first_item[vs[vr == 0]] = vi[vr == 0]
    ss = np.flatnonzero(search)
    # order within a session: search, then view/click/cart per item, then checkout (purchases)
    ev_sess = np.concatenate([ss, vs, vs[clicked], vs[carted], vs[bought]])
    ev_key = np.concatenate([np.zeros(ss.size, int), 1 + 3 * vr, 2 + 3 * vr[clicked], 3 + 3 * vr[carted],
                             1 + 3 * MAX_VIEWS + vr[bought]])  # fmt: skip
    ev_type = np.repeat([_SEARCH, _VIEW, _CLICK, _CART, _BUY], [ss.size, n_v, clicked.sum(), carted.sum(), bought.sum()])
    ev_item = np.concatenate([np.full(ss.size, -1), vi, vi[clicked], vi[carted], vi[bought]])
    ev_qty = np.concatenate([np.zeros(ss.size + n_v + clicked.sum() + carted.sum(), int), qty[bought]])
    o = np.lexsort((ev_key, ev_sess))
    ev_sess, ev_type, ev_item, ev_qty = ev_sess[o], ev_type[o], ev_item[o], ev_qty[o]
    gap = 1 + rng.exponential(GAP_MEAN_S, ev_sess.size).astype(np.int64)
    is_first = np.r_[True, ev_sess[1:] != ev_sess[:-1]]
    gap[is_first] = 0
    elapsed = np.cumsum(gap)
    ts = start[ev_sess] + elapsed - elapsed[np.flatnonzero(is_first)][np.cumsum(is_first) - 1]
    o = np.argsort(ts, kind="stable")  # files read like a log: in time order, sessions interleaved
    ev_sess, ev_type, ev_item, ev_qty, ts = ev_sess[o], ev_type[o], ev_item[o], ev_qty[o], ts[o]

    queries = np.full(n_sess, "", dtype=object)
    for s in ss:
        queries[s] = _query(rng, cat.words[first_item[s]])
    sess_ids = np.array([f"S{u + 1:08d}-{k:04d}" for u, k in zip(su, number)], dtype=object)
    user_ids = np.array([f"U{u + 1:06d}" for u in range(u0, u1)], dtype=object)
    priced = (ev_type == _CART) | (ev_type == _BUY)
    stamps = np.char.add(np.datetime_as_string(START + ts.astype("timedelta64[s]"), unit="s"), "Z")
    return [
        user_ids[su[ev_sess] - u0], cat.ids[ev_item], np.array(EVENT_TYPES, dtype=object)[ev_type],
        stamps.astype(object), sess_ids[ev_sess], np.where(ev_type == _SEARCH, queries[ev_sess], ""),
        np.where(priced, cat.prices[ev_item], ""), np.where(ev_type == _BUY, ev_qty.astype(str).astype(object), ""),
    ]  # fmt: skip


def _inject_bad(rng: np.random.Generator, cols: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, int]]:
    """cols plus broken copies of some rows, inserted at random places; and the count per kind."""
    user, item, etype, stamp, _, _, price, _ = range(len(RAW_EVENT_COLUMNS))
    n = cols[0].size
    non_search = np.flatnonzero(cols[etype] != "search")
    priced = np.flatnonzero(cols[price] != "")
    extra: list[list[np.ndarray]] = []
    counts: dict[str, int] = {}
    for kind, rate in BAD_RATES.items():
        pool = non_search if kind in ("missing_item_id", "unknown_item") else priced if kind == "negative_price" else np.arange(n)
        k = min(pool.size, max(1, round(rate * n)))
        src = np.sort(rng.choice(pool, k, replace=False))
        bad = [c[src].copy() for c in cols]
        pick = rng.integers(0, 1_000_000, k)
        if kind == "missing_user_id":
            bad[user] = np.where(np.arange(k) % 3 == 2, "   ", "").astype(object)
        elif kind == "missing_item_id":
            bad[item][:] = ""
        elif kind == "unknown_event_type":
            bad[etype] = np.array(["wishlist", "CLICK!!", "share", "compare"], dtype=object)[pick % 4]
        elif kind == "unparsable_timestamp":
            bad[stamp] = np.array(["yesterday", "2024-13-45T99:00:00Z", "2024-02-30T10:00:00Z", "N/A"], dtype=object)[pick % 4]
        elif kind == "future_timestamp":
            bad[stamp] = np.array(["2096" + s[4:] for s in bad[stamp]], dtype=object)  # leap year, like 2024
        elif kind == "negative_price":
            bad[price] = np.array(["-" + p for p in bad[price]], dtype=object)
        elif kind == "unknown_item":
            bad[item] = np.array([f"I99{p % 10000:04d}" for p in pick], dtype=object)
        extra.append(bad)
        counts[kind] = k
    n_bad = sum(counts.values())
    # valid rows keep their order; each bad row lands between two of them at random
    order = np.argsort(np.concatenate([np.arange(n) + 0.5, rng.uniform(0, n, n_bad)]), kind="stable")
    return [np.concatenate([c, *(b[j] for b in extra)])[order] for j, c in enumerate(cols)], counts


def _write_csv(path: Path, header: tuple[str, ...], rows: object) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)  # type: ignore[arg-type]


def generate(
    out_dir: str | Path, scale: str = "demo", seed: int = 7, progress: Callable[[int, int], None] | None = None
) -> GenerateSummary:
    """Write catalog.csv, events/part-*.csv and bad_rows.json under out_dir (events/ is replaced)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    spec = SCALES[scale]
    out = Path(out_dir)
    events_dir = out / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*.csv"):  # a smaller rerun must not leave stale parts behind
        old.unlink()
    rng = np.random.default_rng(seed)
    cat = _make_catalog(rng, spec.n_items)
    users = _make_users(rng, cat, spec)

    # a look-alike of one item with a new id and a negative price, then another item listed twice
    like, dup_of = (int(i) for i in rng.integers(spec.n_items, size=2))
    catalog_rows = [*cat.rows, [f"I{spec.n_items + 1:06d}", *cat.rows[like][1:4], "-" + cat.rows[like][4]],
                    [cat.rows[dup_of][0], cat.rows[dup_of][1] + " (Old Listing)", *cat.rows[dup_of][2:]]]  # fmt: skip
    _write_csv(out / "catalog.csv", RAW_CATALOG_COLUMNS, catalog_rows)

    bad: dict[str, int] = dict.fromkeys(BAD_RATES, 0)
    starts = range(0, spec.n_users, spec.users_per_file)
    total_files, n_files, n_rows = len(starts), 0, 0
    for u0 in starts:
        cols = _chunk_events(rng, cat, users, u0, min(u0 + spec.users_per_file, spec.n_users), spec)
        # users_per_file keeps this at 1; it is a guard against a chunk that came out unusually large
        n_parts = -(-int(cols[0].size * (1 + sum(BAD_RATES.values()))) // MAX_ROWS_PER_FILE)
        total_files += n_parts - 1
        for part in np.array_split(np.arange(cols[0].size), n_parts):
            rows, counts = _inject_bad(rng, [c[part] for c in cols])
            _write_csv(events_dir / f"part-{n_files:05d}.csv", RAW_EVENT_COLUMNS, zip(*rows))
            bad = {kd: bad[kd] + counts[kd] for kd in bad}
            n_files += 1
            n_rows += rows[0].size
            if progress is not None:
                progress(n_files, total_files)
    bad.update(dict.fromkeys(CATALOG_BAD_KINDS, 1))
    (out / "bad_rows.json").write_text(json.dumps({**bad, "total_rows": n_rows}, indent=2) + "\n")
    return GenerateSummary(str(out), spec.n_items, spec.n_users, n_rows, n_files, bad)
