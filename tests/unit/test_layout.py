"""The package layout rules that keep `import platform` working and layers pointing one way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_no_platform_package_shadows_stdlib():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert [p.name for p in (REPO / "platform").iterdir() if p.suffix == ".py"] == []


def test_import_layers_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(REPO / ".importlinter")], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
