"""Offline full-ranking evaluation: the query state at a split's cutoff, the Recommender protocol,
the evaluation loop and its report.

An :class:`EvalSplit` is what every system sees: for each user with a target in the split, their
history (the last L interactions strictly before the split's first timestamp) and the items they
had seen by then; the targets are the distinct items they later clicked or went deeper on. Systems
are fitted on the interactions before the cutoff only (train for ``valid``, train+valid for
``test``), so nothing from the evaluated period leaks into a model or its features.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import scipy.sparse as sp

from rayrec.features.batches import without_history
from rayrec.features.transforms import history_window
from rayrec.features.trend import DAY_MS
from rayrec.features.vocab import PAD_ID, UNK_ID
from rayrec.metrics import membership, ranking_metrics, user_metrics

SPLIT_IDS: dict[str, int] = {"train": 0, "valid": 1, "test": 2}
_COLUMNS = ["user_idx", "item_idx", "ts_ms", "split", "stage"]  # the hist_* lists are not needed


@dataclass(frozen=True)
class EventLog:
    """Interactions before the cutoff, sorted by user then time (what sequence models replay)."""

    user_idx: np.ndarray  # int32
    item_idx: np.ndarray  # int32
    ts_ms: np.ndarray  # int64
    stage: np.ndarray  # int8


@dataclass
class EvalSplit:
    """The evaluation view of one split; rows of every per-user array follow ``users``.

    ``history_*`` are ``[U, L]``, oldest first and right-aligned (the latest interaction is in the
    last column); padding is 0 in all three, so ``history_items != 0`` is the mask (type 0 is also
    'view'). ``history_gaps`` are seconds from each interaction to ``cutoff_ms``.
    """

    split: str
    cutoff_ms: int  # the split's first timestamp; everything in ``prior`` is strictly earlier
    users: np.ndarray  # int32 user_idx of users with >= 1 target, ascending
    history_items: np.ndarray  # int32 [U, L]
    history_types: np.ndarray  # int8 [U, L]
    history_gaps: np.ndarray  # float32 [U, L]
    seen: sp.csr_matrix  # bool [U, n_items]: interacted with before the cutoff
    targets: sp.csr_matrix  # bool [U, n_items]: distinct items with stage >= min_stage in the split
    item_popularity: np.ndarray  # int64 [n_items]: train-split interaction counts
    n_items: int
    n_users: int
    interactions: sp.csr_matrix  # float32 [n_users, n_items]: interaction counts before the cutoff
    prior: EventLog
    min_stage: int  # the stage threshold actually used for targets (see load_eval_split)

    @property
    def no_history(self) -> np.ndarray:
        """bool ``[U]``: users with no interaction before the cutoff (the cold-start path's users)."""
        return without_history(self.history_items)

    def recent_counts(self, window_days: float) -> np.ndarray:
        """float64 ``[n_items]``: interactions per item in the ``window_days`` before the cutoff (what
        RecentlyPopular ranks by and the ranker's trend input reads in evaluation)."""
        recent = self.prior.ts_ms >= self.cutoff_ms - int(round(window_days * DAY_MS))
        return np.bincount(self.prior.item_idx[recent], minlength=self.n_items).astype(np.float64)


class NotRunnable(RuntimeError):
    """A system that cannot run at this size (e.g. a dense item x item matrix past the memory allowed):
    reported as "not run" with the reason, never a crash of the whole evaluation."""


@runtime_checkable
class Recommender(Protocol):
    """A system under evaluation. ``recommend`` returns ``[len(split.users), k]`` item ids, best
    first, never 0/1, never an item of ``split.seen`` when ``exclude_seen``; -1 pads a short row."""

    name: str

    def fit(self, split: EvalSplit) -> None: ...

    def recommend(self, split: EvalSplit, k: int, exclude_seen: bool) -> np.ndarray: ...


def _read_manifest(processed_dir: Path) -> dict:
    path = processed_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def count_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], dtype: type) -> sp.csr_matrix:
    """Counts of (row, col) pairs as a canonical CSR (duplicates summed, indices sorted)."""
    m = sp.csr_matrix((np.ones(len(rows), dtype=dtype), (rows, cols)), shape=shape)
    m.sum_duplicates()
    return m


def load_eval_split(
    processed_dir: str | Path,
    split: Literal["valid", "test"],
    history_length: int,
    min_stage: int = 1,
) -> EvalSplit:
    """Build the :class:`EvalSplit` of ``split`` from a ``rayrec preprocess`` output folder.

    Targets are the distinct items a user reached at ``stage >= min_stage`` (1 = click) in the split.
    When the split holds no such interaction at all (a views-only log) every interaction counts, and
    ``EvalSplit.min_stage`` says so; a log with no views needs no fallback since clicks are all it has.
    """
    processed_dir = Path(processed_dir)
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    manifest = _read_manifest(processed_dir)
    sid = SPLIT_IDS[split]
    table = ds.dataset(processed_dir / "events", format="parquet").to_table(
        columns=_COLUMNS, filter=ds.field("split") <= sid  # later splits are never read
    )
    cols = {c: table.column(c).to_numpy() for c in _COLUMNS}
    sizes = manifest.get("vocab_sizes", {})
    n_items = int(sizes.get("items", int(cols["item_idx"].max(initial=UNK_ID)) + 1))
    n_users = int(sizes.get("users", int(cols["user_idx"].max(initial=UNK_ID)) + 1))

    in_split = cols["split"] == sid
    if not in_split.any():
        raise ValueError(f"{processed_dir}: the {split} split has no events")
    cutoff = int(cols["ts_ms"][in_split].min())
    before = cols["split"] < sid
    if before.any() and int(cols["ts_ms"][before].max()) >= cutoff:
        raise ValueError(f"{processed_dir}: events before {split} are not strictly earlier than it")

    stage = cols["stage"][in_split]
    used_stage = min_stage if (stage >= min_stage).any() else 0
    relevant = stage >= used_stage
    t_users, t_items = cols["user_idx"][in_split][relevant], cols["item_idx"][in_split][relevant]
    users = np.unique(t_users).astype(np.int32)
    targets = count_matrix(np.searchsorted(users, t_users), t_items, (len(users), n_items), np.float32)
    targets.data[:] = 1.0

    order = np.lexsort((cols["ts_ms"][before], cols["user_idx"][before]))  # stable within equal ts
    prior = EventLog(*(cols[c][before][order] for c in ("user_idx", "item_idx", "ts_ms", "stage")))
    train = cols["split"] == SPLIT_IDS["train"]
    popularity = np.bincount(cols["item_idx"][train], minlength=n_items).astype(np.int64)
    interactions = count_matrix(prior.user_idx, prior.item_idx, (n_users, n_items), np.float32)

    # Each user's rows in ``prior`` are [start, end); history_window takes the L rows before ``end``.
    start = np.searchsorted(prior.user_idx, users, side="left")
    end = np.searchsorted(prior.user_idx, users, side="right")
    idx, valid = history_window(start, end, history_length)
    gaps_s = (cutoff - prior.ts_ms).astype(np.float64) / 1000.0

    def pick(values: np.ndarray, dtype: type) -> np.ndarray:
        gathered = values[idx] if len(values) else np.zeros(idx.shape, dtype=dtype)
        return np.where(valid, gathered, 0).astype(dtype)

    seen = interactions[users].astype(bool).tocsr()
    return EvalSplit(
        split=split, cutoff_ms=cutoff, users=users,
        history_items=pick(prior.item_idx, np.int32), history_types=pick(prior.stage, np.int8),
        history_gaps=pick(gaps_s, np.float32), seen=seen, targets=targets.astype(bool).tocsr(),
        item_popularity=popularity, n_items=n_items, n_users=n_users, interactions=interactions,
        prior=prior, min_stage=used_stage,
    )  # fmt: skip


def rows_per_batch(n_items: int, cells: int = 1 << 24, cap: int = 4096) -> int:
    """How many users' dense ``[n_items]`` rows fit in ``cells`` values (16M: ~128 MiB as float64)."""
    return max(1, min(cap, cells // max(n_items, 1)))


def topk_excluding(
    scores: np.ndarray, seen: sp.csr_matrix, k: int, exclude_seen: bool, batch_size: int | None = None
) -> np.ndarray:
    """Top-``k`` item ids per row of ``scores [U, n_items]``, best first, as int64 ``[U, k]``.

    Ids 0/1 (and NaN scores) are never returned, nor items of ``seen`` when ``exclude_seen``; a row
    with fewer than ``k`` eligible items is padded with -1. Equal scores rank the lower item id
    first. Rows are processed ``batch_size`` at a time (default: :func:`rows_per_batch`) so the
    masked copy stays small.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_users, n_items = scores.shape
    k_eff = min(k, n_items)
    batch_size = batch_size or rows_per_batch(n_items)
    out = np.full((n_users, k), -1, dtype=np.int64)
    for lo in range(0, n_users, batch_size):
        hi = min(lo + batch_size, n_users)
        block = np.array(scores[lo:hi], dtype=np.float64)  # a copy: masking must not touch the caller's
        block[np.isnan(block)] = -np.inf
        block[:, [PAD_ID, UNK_ID]] = -np.inf
        if exclude_seen:
            sub = seen[lo:hi].tocoo()
            block[sub.row, sub.col] = -np.inf
        # The k-th largest score is the threshold; every item above it is in, and of the items equal
        # to it the lowest ids fill the remaining places, so ties never depend on argpartition.
        kth = np.argpartition(-block, k_eff - 1, axis=1)[:, k_eff - 1 : k_eff]
        thr = np.take_along_axis(block, kth, axis=1)
        above = block > thr
        at = block == thr
        room = k_eff - above.sum(axis=1, keepdims=True)
        chosen = above | (at & (np.cumsum(at, axis=1) <= room))
        part = np.nonzero(chosen)[1].reshape(hi - lo, k_eff)  # exactly k_eff per row, ids ascending
        vals = np.take_along_axis(block, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)  # by score desc, then item id asc
        ids = np.take_along_axis(part, order, axis=1)
        ranked_vals = np.take_along_axis(vals, order, axis=1)
        out[lo:hi, :k_eff] = np.where(np.isfinite(ranked_vals), ids, -1)
    return out


def _check_output(system: Recommender, split: EvalSplit, top: np.ndarray, k: int,
                  exclude_seen: bool) -> None:
    """Fail loudly on a contract breach rather than report flattering numbers from it."""
    expected = (len(split.users), k)
    if top.shape != expected:
        raise ValueError(f"{system.name}: recommend returned shape {top.shape}, expected {expected}")
    if np.isin(top, [PAD_ID, UNK_ID]).any() or (top >= split.n_items).any() or (top < -1).any():
        raise ValueError(f"{system.name}: recommend returned reserved or out-of-range item ids")
    if exclude_seen and membership(top, split.seen).any():
        raise ValueError(f"{system.name}: recommend returned items the user had already seen")


def evaluate(
    systems: Sequence[Recommender],
    split: EvalSplit,
    ks: Sequence[int] = (10, 20, 50, 100),
    exclude_seen: bool = True,
    segments: Mapping[str, np.ndarray] | None = None,
    cold_start: Recommender | None = None,
) -> pd.DataFrame:
    """Fit and score each system on ``split``: one row per system, metric columns plus timings; for
    each of ``segments`` (a bool mask over the split's users) also Recall / NDCG of its users at K=20
    (or the largest K when 20 is not asked for). ``df.attrs["per_user"]`` holds each system's per-user
    Recall and NDCG at that K (``metrics.user_metrics``), for paired comparisons of two systems.

    With ``cold_start``, every system's users without history get that system's list instead of their
    own (one cold-user policy for all). A system whose ``fit`` raises ``NotRunnable`` (too large for this
    machine) gets a row with its reason in ``not_run`` and no metrics."""
    kmax = max(ks)
    segment_k = 20 if 20 in ks else kmax
    rows, per_user = [], {}
    cold_rows = np.flatnonzero(split.no_history)
    cold_top = None
    if cold_start is not None and cold_rows.size:
        cold_start.fit(split)
        cold_top = np.asarray(cold_start.recommend(split, kmax, exclude_seen))[cold_rows]
    for system in systems:
        t0 = time.perf_counter()
        try:
            system.fit(split)
        except NotRunnable as error:
            rows.append({"system": system.name, "not_run": str(error)})
            continue
        t1 = time.perf_counter()
        top = np.asarray(system.recommend(split, kmax, exclude_seen))
        if cold_top is not None:
            top[cold_rows] = cold_top
        t2 = time.perf_counter()
        _check_output(system, split, top, kmax, exclude_seen)
        metrics = ranking_metrics(top, split.targets, ks, split.item_popularity)
        for segment, mask in (segments or {}).items():
            if mask.any():
                part = ranking_metrics(top[mask, :segment_k], split.targets[mask], (segment_k,))
                metrics.update({f"{m} ({segment})": part[m] for m in (f"recall@{segment_k}", f"ndcg@{segment_k}")})
        per_user[system.name] = user_metrics(top[:, :segment_k], split.targets, segment_k)
        rows.append({"system": system.name, **metrics, "fit_s": t1 - t0, "recommend_s": t2 - t1})
    df = pd.DataFrame(rows)
    df.attrs["per_user"] = per_user
    if "users" in df:
        df["users"] = df["users"].astype("Int64")  # a row that did not run has no count
    return df


def markdown_table(df: pd.DataFrame) -> str:
    rows = df.itertuples(index=False)
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" if c == "system" else "---:" for c in df.columns) + "|"
    return "\n".join([header, rule, *("| " + " | ".join(r) + " |" for r in cells)])


def write_report(df: pd.DataFrame, out_dir: str | Path, title: str, notes: str = "",
                 chart_k: int = 20) -> dict[str, Path]:
    """Write ``report.md`` (table), ``report.json`` (records) and ``report.png`` (a grouped bar
    chart of Recall@K and NDCG@K per system, K = ``chart_k``) to ``out_dir``.

    Returns the three paths keyed ``markdown``, ``json`` and ``png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without touching the global backend
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    paths["markdown"].write_text(f"# {title}\n\n{notes}\n\n{markdown_table(df)}\n" if notes
                                 else f"# {title}\n\n{markdown_table(df)}\n")
    records = json.loads(df.to_json(orient="records"))  # via pandas: numpy scalars become plain JSON
    paths["json"].write_text(json.dumps({"title": title, "notes": notes, "rows": records}, indent=2))

    fig = Figure(figsize=(max(6.0, 1.2 * len(df) + 2), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(df))
    # K = chart_k (20 for recommendations, 10 for search); a run without it charts its smallest K.
    ks = sorted(int(c.split("@")[1]) for c in df.columns if c.startswith("recall@") and c[7:].isdigit())
    k = chart_k if chart_k in ks else (ks[0] if ks else None)
    for i, col in enumerate([f"recall@{k}", f"ndcg@{k}"] if k is not None else []):
        ax.bar(x + (i - 0.5) * 0.38, df[col].to_numpy(float), width=0.38, label=col)
    ax.set_xticks(x, df["system"].astype(str).tolist(), rotation=20, ha="right")
    ax.set_title(title)
    if k is not None:
        ax.legend()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=110)
    return paths
