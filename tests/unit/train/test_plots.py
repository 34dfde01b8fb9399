"""Training curves: the ranker's last-epoch boost change is marked, and the PNG is written."""

from __future__ import annotations

from rayrec.train.plots import _boost_changes, plot_training_curves


def test_only_points_scored_under_a_new_trend_boost_are_marked():
    rows = [{"epoch": 0.0, "trend_boost": 0.0}, {"epoch": 1.0, "trend_boost": 0.0}, {"epoch": 2.0, "trend_boost": 4.0}]
    assert _boost_changes(rows) == [(2, 0.0, 4.0)]
    assert _boost_changes([{"epoch": 0.0}, {"epoch": 1.0}]) == []  # retrieval: no boost


def test_curves_with_a_boost_change_are_plotted(tmp_path):
    rows = [{"epoch": float(e), "loss": 1.0 / (e + 1), "valid_ndcg@20": 0.1 * (e + 1), "trend_boost": b}
            for e, b in enumerate([0.0, 0.0, 2.0])]
    png = plot_training_curves(rows, tmp_path / "ranker_curves.png", "ranker")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
