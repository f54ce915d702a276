"""`python -m reproduce` (issue 26): a new command, so "before" is "clear": these are kept as regression cases."""

from __future__ import annotations

import json
from pathlib import Path

from tests.reliability import Case, Result


def _torn_record(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "reproduce.json").write_text('{"rows": {')


def _failure_recorded(tmp: Path, result: Result) -> None:
    record = json.loads((tmp / "out" / "reproduce.json").read_text())["rows"]["sam-bsds500-edges"]
    assert record["status"] == "failed" and "sam.download=true" in record["error"], record


CASES = [
    Case("reproduce-unknown-row", "clear", argv=("-m", "reproduce", "no-such-row"), names=("no-such-row", "--list")),
    Case("reproduce-no-row", "clear", argv=("-m", "reproduce"), names=("--all",)),
    Case(
        "reproduce-table-missing",
        "clear",
        argv=("-m", "reproduce", "--table", "{tmp}/none.json"),
        names=("{tmp}/none.json",),
    ),
    Case(
        "reproduce-torn-record",
        "clear",
        argv=("-m", "reproduce", "retrieval-roxford5k-vits14", "--pipeline", "--out", "{tmp}/out"),
        setup=_torn_record,
        names=("{tmp}/out/reproduce.json", "--out"),
        absent=("out/runs",),
    ),
    # A real row without its weights fails with the weights' paragraph (in train.py's syntax), recorded; the exit code says a row failed.
    Case(
        "reproduce-row-without-data",
        "clear",
        argv=("-m", "reproduce", "sam-bsds500-edges", "--out", "{tmp}/out", "--data-dir", "{tmp}/data"),
        names=("sam-bsds500-edges FAILED", "sam_vit_h_4b8939.pth", "sam.download=true"),
        check=_failure_recorded,
        exit_code=1,
    ),
]
