"""What the benchmarks that run each case in a child process share: ending a case cleanly."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console


def finish_child(proc: subprocess.Popen, pids: Iterable[int], result_path: Path, log_path: Path, what: str,
                 console: Console) -> dict[str, Any]:
    """Kill the Ray processes a case started that outlived their driver, then return the case's
    JSON result, or stop the benchmark with the log's tail when the case failed."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    if proc.returncode != 0 or not result_path.exists():
        console.print(log_path.read_text()[-4000:], markup=False, highlight=False)
        raise SystemExit(f"{what} failed (exit {proc.returncode}); log: {log_path}")
    return json.loads(result_path.read_text())
