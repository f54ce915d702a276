"""Writing result tables as CSV and JSON, each through a temporary file and a rename."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_rows(rows: list[dict[str, Any]], stem: Path) -> None:
    """Rows (dicts with the same keys) -> `<stem>.csv` and `<stem>.json`."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(stem.with_suffix(".csv"), table.getvalue())
    write_atomic(stem.with_suffix(".json"), json.dumps(rows, indent=2))
