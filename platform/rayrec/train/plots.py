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
        for key in quality:
            axes[0][1].plot(epochs, [r.get(key, float("nan")) for r in rows], marker="o", label=key[6:])
        axes[0][1].set(title="validation (full ranking)", xlabel="epoch")
        axes[0][1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
