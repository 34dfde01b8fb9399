"""What every reliability test measures and how it reports it: a JSON file under the test's
tmp_path, a printed line (``pytest -s`` shows it), and one JSON line appended to the file named by
``RAYREC_RELIABILITY_LOG`` when that is set."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def record(test: str, tmp_path: Path, figures: dict[str, Any]) -> dict[str, Any]:
    row = {"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    line = json.dumps(row, sort_keys=False, default=str)
    (tmp_path / f"{test}.json").write_text(json.dumps(row, indent=2, default=str))
    print(f"\nRELIABILITY {line}")
    log = os.environ.get("RAYREC_RELIABILITY_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(line + "\n")
    return row
