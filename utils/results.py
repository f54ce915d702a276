"""Results files as strict JSON, through a temporary file and a rename: the one writer of every results file.

Python's `json.dumps` writes NaN and inf as the bare words `NaN` / `Infinity`, which are not JSON and which other
readers reject or take for numbers. Here a value that is not a finite number is written as `null`, and the reason is
logged (the caller's, or "not computable").
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.atomic import write_text

log = logging.getLogger(__name__)

NOT_COMPUTABLE = "it could not be computed (see the warnings above)"


def strict_json(data: Any, indent: int | None = 2) -> tuple[str, dict[str, float]]:
    """`data` (dicts, lists, numbers, strings, ...) as strict JSON text, each non-finite float written as null.

    Returns the text and the replaced values by where they were (`test/RMSE`, `[2].val/mIoU`).
    """
    replaced: dict[str, float] = {}

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            return {key: clean(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [clean(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            replaced[where] = value
            return None
        return value

    return json.dumps(clean(data, ""), indent=indent, allow_nan=False), replaced


def write_json(path: Path, data: Any, reasons: Mapping[str, str] | None = None, indent: int | None = 2) -> None:
    """Write `data` to `path` as strict JSON (see `strict_json`); log each value written as null with its reason.

    `reasons` gives the reason by top-level key (a metric name) or by full location.
    """
    text, replaced = strict_json(data, indent)
    write_text(Path(path), text)
    by_reason: dict[str, list[str]] = {}
    for where in replaced:
        reason = (reasons or {}).get(where) or (reasons or {}).get(where.split(".", 1)[0]) or NOT_COMPUTABLE
        by_reason.setdefault(reason, []).append(where)
    for reason, places in by_reason.items():
        log.warning(
            "%s: %s %s not a finite number, written as null: %s",
            path,
            ", ".join(places),
            "is" if len(places) == 1 else "are",
            reason,
        )
