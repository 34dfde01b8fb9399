"""docs/configuration.md matches the schema, and no field description quotes a benchmark figure."""

from __future__ import annotations

import difflib
import re

import pytest
from pydantic import BaseModel, Field

from rayrec.config import RayrecConfig, Section
from rayrec.config_docs import DOC_PATH, HEADER, iter_fields, render
from tests.conftest import REPO

# What a quoted result looks like: a metric name (optionally @k) with a score after or before it, a number with
# a latency, throughput or ratio unit, an approximate figure, or a figure of change ("40% less"). Scores are
# decimals or percentages: integers beside a metric name are cut-offs or counts ("NDCG@20 of users with
# history", "top 100"), which describe behaviour, not results.
_METRIC = r"\b(?:recall|ndcg|mrr|map|hit\s?rate|hit|hits|hr|precision|auc|coverage|latency|p50|p90|p95|p99)(?:@\w+)?"
_SCORE = r"(?<![\w.])[-+−]?(?:\d*\.\d+|\d+(?:\.\d+)?\s*%)"
_CHANGE = r"(?:less|more|fewer|faster|slower|lower|higher|smaller|larger|better|worse)\b"
_FIGURE = re.compile(
    rf"{_METRIC}(?:(?!\.\s)[^;\n]){{0,40}}?{_SCORE}"  # "valid NDCG@20 0.0929", "Recall@20 of ... 0.036"
    rf"|{_SCORE}\s*(?:\S+\s+){{0,2}}?{_METRIC}"  # "5% NDCG@20", "+20% one-request latency"
    r"|(?<![\w.])\d+(?:\.\d+)?\s*(?:ms|µs|req/s|requests/s|queries/s|qps|rps|[x×])(?![\w/])"  # "2.5 ms", "1.14x"
    r"|(?<!\w)[x×]\s*\d+(?:\.\d+)?\b"  # "× 1.5"
    r"|(?<![\w.])~\s*\d+(?:\.\d+)?(?:\s*[%\w/]+)?"  # "~300 MB"
    rf"|{_SCORE}\s*(?:\S+\s+)?{_CHANGE}"  # "40% less CPU"
    rf"|(?<![\w.])\d+(?:\.\d+)?\s*[KMG]i?B\s+{_CHANGE}",  # "300 MB less"
    re.IGNORECASE,
)


def quoted_figures(text: str) -> list[str]:
    return [m.group(0) for m in _FIGURE.finditer(text)]


def figures_in_schema(root: type[BaseModel] = RayrecConfig) -> dict[str, list[str]]:
    """Dotted key -> the figures its description quotes, for every field that quotes any."""
    found = {key: quoted_figures(info.description or "") for key, info in iter_fields(root)}
    return {key: figures for key, figures in found.items() if figures}


def test_configuration_doc_is_current():
    path = REPO / DOC_PATH
    expected = render()
    actual = path.read_text(encoding="utf-8") if path.exists() else ""
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True),
                                                 DOC_PATH, "rendered from config.py"))[:40])
        pytest.fail(f"{DOC_PATH} is stale: run `make docs` and commit it.\n{diff}")


def test_rendering_is_deterministic_and_complete():
    text = render()
    assert text == render()
    assert text.splitlines()[0] == HEADER
    for key, _ in iter_fields():
        section, _, name = key.rpartition(".")
        heading = f"## `{section}`" if section else "## Top level"
        assert heading in text, f"no section for {key}"
        assert f"| `{name}` |" in text, f"{key} is not in the table"


def test_rendered_types_and_defaults_are_readable():
    text = render()
    assert '| `format` | one of `"rayrec"`, `"movielens"`, `"retailrocket"`, `"online_retail"`, `"generic"` | ' \
           '`"rayrec"` |' in text
    assert "| `trend_boost` | float or null (≥ 0) | `null` |" in text
    assert "| `ks` | list of int | `[10, 20, 50, 100]` |" in text
    assert "| `validate` | section [`validate`](#validate) |" in text     # the YAML key, not validate_
    assert "| `type` | one of" in text and "| required |" in text            # a field without default


def test_no_description_quotes_a_benchmark_figure():
    offenders = figures_in_schema()
    assert not offenders, ("field descriptions say what a field does, not what it scored; rewrite: "
                           + "; ".join(f"{k} quotes {v}" for k, v in offenders.items()))


@pytest.mark.parametrize("text", [
    "valid NDCG@20 0.0929",
    "Online Retail valid Recall@20 of the two-stage system 0.036 → 0.041",
    "off: on the demo data they cost 5% NDCG@20",
    "MRR 0.31 on MovieLens",
    "hit rate +2.5%",
    "one request takes 2.5 ms",
    "25 ms measured best at p99 < 100 ms",
    "several replicas reach 1200 req/s",
    "measured 1.14x ALS",
    "p99 0.8",
    "retrieval replicas then start faster and use ~300 MB less",
    "no Python cost per operator: 40% less CPU per request",
    "replicas use 300 MB less",
])
def test_figures_are_caught(text: str):
    assert quoted_figures(text), text


@pytest.mark.parametrize("text", [
    "the smallest whose validation NDCG@20 (two-stage) is within one standard error of the best",
    "auto: recall@recall_k against exact search that nprobe/efSearch are raised to reach.",
    "Choice rule: p99 scoring latency limit.",
    "Requests one replica works on at once (Serve's default of 5 throttles batching).",
    "'cosine' decays it from lr to lr × lr_floor by the last step.",
    "IVF lists (null: about 4·sqrt(items)); the index 0 is reserved.",
    "Only hits whose fused score is at least this share of the best hit's are re-ordered.",
])
def test_behaviour_is_not_mistaken_for_a_figure(text: str):
    assert not quoted_figures(text), quoted_figures(text)


def test_the_schema_scan_names_an_offending_nested_field():
    class Ranker(Section):
        hard_negatives: int = Field(2, description="Negatives per positive drawn from the retrieval top-K.")
        hard_negative_pool: int = Field(200, description="K of the top-K (demo: 50 → valid NDCG@20 0.0929).")

    class Root(Section):
        ranker: Ranker = Field(default_factory=Ranker)

    assert figures_in_schema(Root) == {"ranker.hard_negative_pool": ["NDCG@20 0.0929"]}
