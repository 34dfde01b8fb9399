"""Pareto front, the choice rule, the written report and the chosen config's round trip."""

from __future__ import annotations

from rayrec.config import TuneConfig, load_config
from rayrec.tune.report import TrialRow, choose, pareto_front, plot_pareto, write_chosen_config, write_markdown
from rayrec.tune.trial import trial_config


def row(name: str, ndcg: float, p99: float, size: float, stage: float = 1.0, **params) -> TrialRow:
    return TrialRow(trial=name, params=params, metrics={
        "valid_ndcg@20": ndcg, "valid_recall@20": ndcg * 2, "p50_ms": p99 / 2, "p99_ms": p99, "size_bytes": size,
        "parameters": size / 4, "stage": stage})


ROWS = [row("a", 0.10, 5.0, 4e6), row("b", 0.09, 2.0, 1e6), row("c", 0.08, 3.0, 2e6),  # c: dominated by b
        row("d", 0.11, 9.0, 8e6, stage=0.0), TrialRow("e", {}, {}, error="boom")]


def test_pareto_front_keeps_only_undominated_trials_in_latency_order():
    assert [r.trial for r in pareto_front(ROWS)] == ["b", "a", "d"]


def test_choice_is_best_quality_within_budgets_among_completed_trials():
    chosen, within = choose(ROWS, TuneConfig())
    assert chosen.trial == "a" and within  # d is better but was stopped early (dense only)
    chosen, within = choose(ROWS, TuneConfig(latency_budget_ms=3.0))
    assert chosen.trial == "b" and within
    chosen, within = choose(ROWS, TuneConfig(latency_budget_ms=4.0, size_budget_bytes=1.5e6))
    assert chosen.trial == "b"
    chosen, within = choose(ROWS, TuneConfig(latency_budget_ms=1.0))
    assert chosen.trial == "a" and not within  # nothing fits: best completed, flagged


def test_report_and_plot_are_written(tmp_path):
    front = pareto_front(ROWS)
    chosen, within = choose(ROWS, TuneConfig())
    md = write_markdown(ROWS, front, chosen, within, TuneConfig(), tmp_path / "tune_report.md").read_text()
    assert "a (chosen)" in md and md.count("\n| ") == len(ROWS) + 1 and "error" in md
    assert "latency none, size none)" in md  # an unset budget reads as none, not "None bytes"
    rule = TuneConfig(latency_budget_ms=4.0, size_budget_bytes=1_500_000)
    md = write_markdown(ROWS, front, chosen, within, rule, tmp_path / "budgets.md").read_text()
    assert "latency 4 ms, size 1,500,000 bytes)" in md
    assert plot_pareto(ROWS, front, chosen, tmp_path / "pareto.png").stat().st_size > 0


def test_chosen_config_round_trips_into_the_loader(tmp_path):
    base = load_config(None, [])
    chosen = trial_config(base.model_dump(mode="json", by_alias=True),
                          {"ranker.cross_rank": 8, "compress.deep": 0.5, "train.lr": 1e-3})
    path = write_chosen_config(chosen, tmp_path / "chosen.yaml")
    again = load_config(path)
    assert again == chosen and again.ranker.cross_rank == 8 and again.compress.deep == 0.5
