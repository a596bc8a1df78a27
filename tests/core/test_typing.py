"""The core is typed like a library: mypy finds nothing in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_mypy_on_the_core() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--cache-dir", "/tmp/caliopen-mypy-cache",
         "bridges/core", "bridges/config.py"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_core_never_imports_a_network_or_the_matrix_side() -> None:
    offenders = []
    for path in (REPO / "bridges" / "core").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(
                name in stripped for name in ("bridges.matrix", "..matrix", "mautrix.appservice", "mautrix.crypto",
                                              "bridges.email", "bridges.sms", "..email", "..sms")):
                offenders.append(f"{path.name}: {stripped}")
    assert offenders == []
