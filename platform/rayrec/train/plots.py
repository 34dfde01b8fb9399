"""Training curves as PNG: loss and validation metrics per epoch (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(rows: list[dict[str, float]], path: Path, title: str) -> Path:
    epochs = [int(r["epoch"]) for r in rows]
    quality = sorted({k for r in rows for k in r if k.startswith("valid_")})
    fig, axes = plt.subplots(1, 2 if quality else 1, figsize=(10 if quality else 5, 3.5), squeeze=False)
    axes[0][0].plot(epochs, [r["loss"] for r in rows], marker="o")
    axes[0][0].set(title="training loss", xlabel="epoch")
    if quality:
        ax = axes[0][1]
        for key in quality:
            ax.plot(epochs, [r.get(key, float("nan")) for r in rows], marker="o", label=key[6:])
        for epoch, before, after in _boost_changes(rows):
            ax.axvline(epoch, color="grey", linestyle=":", label=f"scored with trend boost {before:g} → {after:g}")
        ax.set(title="validation (full ranking)", xlabel="epoch")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _boost_changes(rows: list[dict[str, float]]) -> list[tuple[int, float, float]]:
    """(epoch, boost before, boost from then on) wherever the validation scores change trend boost
    (the ranker's last epoch, scored under the boost fitted on validation): a jump there is the
    boost, not training."""
    boosts = [r.get("trend_boost") for r in rows]
    return [(int(rows[i]["epoch"]), float(boosts[i - 1]), float(boosts[i]))  # type: ignore[arg-type]
            for i in range(1, len(rows))
            if boosts[i] is not None and boosts[i - 1] is not None and boosts[i] != boosts[i - 1]]
