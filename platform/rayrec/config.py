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
    min_user_events: int = Field(3, ge=1, description="k-core: keep users with at least this many interactions.")
    min_item_events: int = Field(3, ge=1, description="k-core: keep items with at least this many interactions.")
    max_kcore_rounds: int = Field(10, ge=1, description="k-core: stop after this many filtering rounds.")
    valid_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of interactions (latest in time) held out for validation.")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of interactions (latest in time) held out for test.")
    history_length: int = Field(20, ge=1, description="L: items of history kept before each target event.")
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


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray cluster to join; null uses RAY_ADDRESS when set, else starts a local Ray."
    )
    num_cpus: int | None = Field(None, description="CPUs for a local Ray (null: all of this machine's).")
    object_store_memory_mb: int | None = Field(None, description="Object store size for a local Ray.")


class RayrecConfig(Section):
    name: str = Field("demo", description="Name of this configuration, shown in reports.")
    source: SourceConfig = Field(default_factory=SourceConfig)
    generate: GenerateConfig | None = Field(
        default_factory=GenerateConfig,
        description="Synthetic data settings; null for configs of real datasets.",
    )
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    def fingerprint(self) -> str:
        """Short hash of the settings that shape the processed data (not where it is written)."""
        payload = self.model_dump(mode="json", by_alias=True, exclude={"name": True, "ray": True})
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


def _set_dotted(data: dict[str, Any], dotted: str, raw_value: str) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw_value) if raw_value != "" else ""


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
        _set_dotted(data, key, value)
    try:
        return RayrecConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
