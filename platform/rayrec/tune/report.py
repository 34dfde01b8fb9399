"""What a tuning experiment leaves behind: the Pareto front (quality vs latency, size as marker) as
PNG, ``tune_report.md`` with every trial, and the chosen configuration as a YAML that ``train``,
``compress`` and ``serve`` read directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


from rayrec.config import RayrecConfig, TuneConfig, write_config

QUALITY, RECALL, LATENCY, SIZE = "valid_ndcg@20", "valid_recall@20", "p99_ms", "size_bytes"


@dataclass
class TrialRow:
    trial: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = None

    @property
    def completed(self) -> bool:
        """Trained, compressed and measured (ASHA-stopped trials report the dense model only)."""
        return self.error is None and self.metrics.get("stage") == 1.0

    def value(self, key: str) -> float:
        return float(self.metrics.get(key, float("nan")))


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Rows no other row beats on both quality (higher) and p99 latency (lower)."""
    ok = [r for r in rows if r.error is None and QUALITY in r.metrics and LATENCY in r.metrics]

    def dominated(r: TrialRow) -> bool:
        return any(o.value(QUALITY) >= r.value(QUALITY) and o.value(LATENCY) <= r.value(LATENCY)
                   and (o.value(QUALITY) > r.value(QUALITY) or o.value(LATENCY) < r.value(LATENCY)) for o in ok)

    return sorted((r for r in ok if not dominated(r)), key=lambda r: r.value(LATENCY))


def choose(rows: list[TrialRow], rule: TuneConfig) -> tuple[TrialRow, bool]:
    """Best NDCG@20 among completed trials within the latency and size budgets; when none fits,
    the best completed trial, flagged (second value False)."""
    done = [r for r in rows if r.completed] or [r for r in rows if r.error is None]
    if not done:
        raise RuntimeError("no trial finished; see the trial errors in the experiment folder")

    def fits(r: TrialRow) -> bool:
        return ((rule.latency_budget_ms is None or r.value(LATENCY) <= rule.latency_budget_ms)
                and (rule.size_budget_bytes is None or r.value(SIZE) <= rule.size_budget_bytes))

    within = [r for r in done if fits(r)]
    best = max(within or done, key=lambda r: r.value(QUALITY))
    return best, bool(within)


def write_chosen_config(cfg: RayrecConfig, path: Path) -> Path:
    return write_config(cfg, path, "Chosen by `rayrec tune`; usable as --config for train, compress and serve.")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _budget(limit: float | None, unit: str) -> str:
    if limit is None:
        return "none"
    return f"{limit:,} {unit}" if isinstance(limit, int) else f"{limit:g} {unit}"


def write_markdown(rows: list[TrialRow], front: list[TrialRow], chosen: TrialRow, within: bool,
                   rule: TuneConfig, path: Path) -> Path:
    keys = sorted({k for r in rows for k in r.params})
    on_front = {r.trial for r in front}
    head = ["trial", *keys, "ndcg@20", "recall@20", "p50 ms", "p99 ms", "size KB", "params", "status", "front"]
    lines = [f"# Tuning report: {len(rows)} trials", "",
             f"Objectives: {QUALITY} (max) and {LATENCY} of scoring one request's candidates on CPU with "
             "1 thread (min); size as marker. Completed trials are the compressed model after fine-tuning; "
             "early-stopped ones (ASHA) show their dense model.", "",
             f"Chosen: **{chosen.trial}** ({'within' if within else 'no trial met'} the budgets: latency "
             f"{_budget(rule.latency_budget_ms, 'ms')}, size {_budget(rule.size_budget_bytes, 'bytes')}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: -r.value(QUALITY) if r.error is None else 1):
        status = "error" if r.error else ("completed" if r.completed else "stopped")
        lines.append("| " + " | ".join([
            r.trial + (" (chosen)" if r is chosen else ""), *(_fmt(r.params.get(k, "")) for k in keys),
            f"{r.value(QUALITY):.4f}", f"{r.value(RECALL):.4f}", f"{r.value('p50_ms'):.2f}", f"{r.value(LATENCY):.2f}",
            f"{r.value(SIZE) / 1024:.0f}", f"{r.value('parameters'):,.0f}", status, "✓" if r.trial in on_front else "",
        ]) + " |")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_pareto(rows: list[TrialRow], front: list[TrialRow], chosen: TrialRow, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.error is None and QUALITY in r.metrics]
    sizes = [max(r.value(SIZE), 1.0) for r in ok]
    scale = 400 / max(sizes) if sizes else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r.value(LATENCY) for r in ok], [r.value(QUALITY) for r in ok], s=[s * scale for s in sizes],
               c=["tab:blue" if r.completed else "tab:gray" for r in ok], alpha=0.6, label="trials (area ∝ size)")
    ax.plot([r.value(LATENCY) for r in front], [r.value(QUALITY) for r in front], "r--", label="Pareto front")
    ax.scatter([chosen.value(LATENCY)], [chosen.value(QUALITY)], marker="*", s=250, c="gold", edgecolors="k",
               label="chosen", zorder=3)
    ax.set_xlabel("ranker p99 latency per request (ms, CPU, 1 thread)")
    ax.set_ylabel("validation NDCG@20")
    ax.set_title("quality vs latency (grey: stopped early, dense)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
