"""Every command line answers --help at once: before torch (or timm, Lightning, scikit-learn) is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "lightning", "sklearn", "matplotlib", "segment_anything")
COMMANDS = [
    ["train.py"],
    ["-m", "visualize.pca"],
    ["-m", "visualize.match"],
    ["-m", "visualize.oneshot"],
    ["-m", "visualize.sam_masks"],
    ["-m", "visualize.explore"],
    ["-m", "visualize.compare"],
    ["-m", "retrieval"],
    ["-m", "reproduce"],
    *(["-m", f"bench.{path.stem}"] for path in sorted((ROOT / "bench").glob("*.py")) if path.stem != "__init__"),
]


def imported_modules(importtime_log: str) -> set[str]:
    """Top-level module names in ``python -X importtime``'s log."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_help_before_heavy_imports(command: list[str], tmp_path: Path) -> None:
    args = [str(ROOT / c) if c.endswith(".py") else c for c in command]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args, "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower() or "powered by Hydra" in proc.stdout
    assert not imported_modules(proc.stderr) & set(HEAVY), sorted(imported_modules(proc.stderr) & set(HEAVY))
