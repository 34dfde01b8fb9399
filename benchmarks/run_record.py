"""Which code a benchmark measured: the commit and the working tree's changes, recorded in every results JSON."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def git_state() -> dict[str, Any]:
    """The commit measured and whether the working tree differed from it (and where)."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = git("status", "--porcelain").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip() or None, "dirty": bool(changed), "changed": changed[:50]}
