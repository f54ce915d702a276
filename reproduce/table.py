"""The Markdown table of rows: published value, tolerance, estimated GPU time, and a run's results when given.

`markdown({})` is docs/reproduce.md's table (empty "ours" columns); `markdown(records)` fills them from reproduce.json.
"""

from __future__ import annotations

from collections.abc import Mapping

from reproduce.rows import ROWS, Row

HEADER = (
    "| row | metric | paper | tol. | est. H100 | ours | delta | within | time | GPU | commit |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
)


def number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def lines(row: Row, record: Mapping) -> list[str]:
    """One line per published value of `row`; the run's time, GPU and commit on the first."""
    digits = 3 if row.scale == 1 else 1
    estimate = f"{row.gpu_minutes:g} min, {row.gpu_gib:g} GiB"
    status = record.get("status")
    out = []
    for index, (metric, paper) in enumerate(row.values.items()):
        result = record.get("values", {}).get(metric, {})
        within = {True: "yes", False: "NO", None: ""}[result.get("within")]
        if status == "failed":
            within = "FAILED"
        elif record.get("mode") == "pipeline":
            within = "pipeline"
        run = ["", "", ""]
        if index == 0 and status:
            run = [
                f"{record.get('seconds', 0):.0f} s",
                str(record.get("gpu", "")),
                str(record.get("commit") or "")[:10],
            ]
        cells = [
            row.name if index == 0 else "",
            metric.removeprefix("test/"),
            number(paper, digits),
            f"±{row.tolerance:g}" if index == 0 else "",
            estimate if index == 0 else "",
            number(result.get("ours"), digits),
            number(result.get("delta"), digits),
            within,
            *run,
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def markdown(records: Mapping[str, Mapping], rows: list[Row] = ROWS) -> str:
    """The table of `rows` with `records` (reproduce.json's "rows"); rows without a record have empty results."""
    return "\n".join([*HEADER, *(line for row in rows for line in lines(row, records.get(row.name, {})))])
