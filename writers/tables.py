"""Result tables as CSV and strict JSON (`utils.results`), each through a temporary file and a rename."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from utils.atomic import write_text
from utils.results import write_json


def write_rows(rows: list[dict[str, Any]], stem: Path) -> None:
    """Rows (dicts with the same keys) -> `<stem>.csv` and `<stem>.json`; a value that is not a finite number is
    empty in the CSV and null in the (strict) JSON, and logged."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(
        [{k: "" if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()} for row in rows]
    )
    write_text(stem.with_suffix(".csv"), table.getvalue())
    write_json(stem.with_suffix(".json"), rows)
