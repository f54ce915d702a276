"""Every bad input and fault of tests/reliability/ run as a user would: one clear paragraph, exit code 2, no traceback,
nothing half-written; or, where the fix is a correct result, that result."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest

from tests.reliability import REPO, Case, Result, all_cases, offline_env, reliability_table, run_cli, substitute

CASES = all_cases()


def run_call(case: Case, tmp: Path) -> Result:
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in offline_env(tmp, case.env).items() if k not in ("PYTHONPATH",)})
    try:
        case.call(tmp)
    except ValueError as err:
        return Result(2, str(err))
    except Exception:  # noqa: BLE001 - any other exception is the failure this test reports
        return Result(1, traceback.format_exc())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Result(0, "")


def test_docs_table_counts_this_table() -> None:
    """The "Reliability" table of docs/reliability.md is `python -m tests.reliability`'s output, kept true by this test."""
    assert reliability_table(CASES) in (REPO / "docs" / "reliability.md").read_text()


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case: Case, tmp_path: Path) -> None:
    if case.setup is not None:
        case.setup(tmp_path)
    result = (
        run_call(case, tmp_path)
        if case.call is not None
        else run_cli(case.argv, tmp_path, case.env, case.timeout, case.fresh, case.memory_limit_gb)
    )
    assert "Traceback" not in result.text, result.text
    assert result.exit_code == case.exit_code, result.text
    for name in case.names:
        assert substitute(name, tmp_path) in result.text, f"{name!r} not named in:\n{result.text}"
    for pattern in case.absent:
        left = sorted(tmp_path.glob(substitute(pattern, tmp_path)))
        assert not left, f"partial output left behind: {left}"
    if case.check is not None:
        case.check(tmp_path, result)
