"""Writing result tables as CSV and JSON, each through a temporary file and a rename."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from utils.atomic import write_text


def write_rows(rows: list[dict[str, Any]], stem: Path) -> None:
    """Rows (dicts with the same keys) -> `<stem>.csv` and `<stem>.json`."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(stem.with_suffix(".csv"), table.getvalue())
    write_text(stem.with_suffix(".json"), json.dumps(rows, indent=2))
