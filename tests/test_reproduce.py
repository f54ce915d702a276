"""`python -m reproduce` (the rows, --dry-run, --pipeline end to end, resume, failures) and `bench.gpu_check`'s
CPU-checkable parts (its plan fits 8 minutes, its report, its refusal without CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from reproduce import rows
from reproduce.__main__ import main
from reproduce.runner import Options, run_rows
from reproduce.table import markdown
from tests.fixture_paths import TINY_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ["--pipeline", "--checkpoint", str(TINY_CHECKPOINT)]


def strict(path: Path) -> dict:
    def refuse(word: str) -> None:
        raise ValueError(f"{path} holds {word}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_row_runs_end_to_end_on_generated_data_and_a_second_run_skips_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--all", *PIPELINE, "--out", str(tmp_path)]) == 0
    first = strict(tmp_path / "reproduce.json")["rows"]
    assert set(first) == set(rows.BY_NAME)
    for name, record in first.items():
        assert record["status"] == "ok" and record["mode"] == "pipeline", (name, record.get("error"))
        assert set(record["values"]) == set(rows.BY_NAME[name].values)
        assert all(value["within"] is None for value in record["values"].values())  # random weights: no verdict
    table = (tmp_path / "reproduce.md").read_text()
    assert all(f"| {name} |" in table for name in rows.BY_NAME)
    capsys.readouterr()

    assert main(["--all", *PIPELINE, "--out", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert all(f"{name}: finished in" in said for name in rows.BY_NAME)
    assert strict(tmp_path / "reproduce.json")["rows"] == first  # nothing ran again


def test_a_failing_row_is_reported_and_the_next_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    good = rows.BY_NAME["retrieval-roxford5k-vits14"]
    monkeypatch.setitem(rows.BY_NAME, "broken", replace(good, name="broken", pipeline=(*good.pipeline, "head.nope=1")))
    assert main(["broken", good.name, *PIPELINE, "--out", str(tmp_path)]) == 1
    records = strict(tmp_path / "reproduce.json")["rows"]
    assert records["broken"]["status"] == "failed" and "head.nope" in records["broken"]["error"]
    assert records[good.name]["status"] == "ok"
    assert "broken FAILED" in capsys.readouterr().out


def test_a_real_run_compares_the_averaged_runs_with_the_paper(tmp_path: Path) -> None:
    row = rows.BY_NAME["matcher-coco20i-1shot"]
    seen = []

    def execute(cfg) -> dict[str, float]:  # stands in for train.run: fold f scores (52.7 + f) / 100
        seen.append(cfg.data.fold)
        return {"test/mIoU": (row.values["test/mIoU"] + cfg.data.fold) / 100}

    record = run_rows([row], Options(tmp_path), execute)[row.name]
    assert seen == [0, 1, 2, 3] and record["mode"] == "real"
    value = record["values"]["test/mIoU"]
    assert value["ours"] == pytest.approx(row.values["test/mIoU"] + 1.5)
    assert value["delta"] == pytest.approx(1.5) and value["within"] is (1.5 <= row.tolerance)


def test_dry_run_lists_every_row_with_weights_data_value_and_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bsds = rows.BY_NAME["sam-bsds500-edges"]
    for need in bsds.data.needs:
        (tmp_path / need).mkdir(parents=True)
    assert main(["--all", "--dry-run", "--data-dir", str(tmp_path)]) == 0
    plan, missing = capsys.readouterr().out.split("Missing:")
    blocks: dict[str, list[str]] = {}  # a row's first line names it, its details are indented
    name = ""
    for line in plan.strip().splitlines():
        if line.startswith("  "):
            blocks[name].append(line)
        elif line.strip():
            name = line.split(":")[0]
            blocks[name] = [line]
    for row in rows.ROWS:
        block = "\n".join(blocks[row.name])
        assert all(f"{metric.removeprefix('test/')} {value:g}" in block for metric, value in row.values.items())
        assert f"{row.gpu_minutes:g} min, {row.gpu_gib:g} GiB" in block and f"data={row.data.config} under" in block
        for model in filter(None, (row.backbone, row.sam and f"SAM {row.sam}")):
            assert f"weights {model}: " in block and "https://dl.fbaipublicfiles.com/" in block
    assert f"data=bsds500 under {tmp_path}: present" in "\n".join(blocks["sam-bsds500-edges"])
    assert "sam-bsds500-edges: data" not in missing and "matcher-fss1000-1shot: data" in missing
    assert "github.com/HKUSTCV/FSS-1000" in missing and "--set sam.download=true" in missing


def test_the_docs_table_is_the_generated_one() -> None:
    assert markdown({}) in (ROOT / "docs" / "reproduce.md").read_text()


def test_an_unknown_row_is_one_paragraph_and_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["no-such-row"]) == 2
    err = capsys.readouterr().err
    assert "no-such-row" in err and "--list" in err and "Traceback" not in err


def test_the_gpu_check_plan_fits_eight_minutes_and_its_docstring_states_it() -> None:
    plan = gpu_check.parts(Path("out"))
    assert sum(part.budget_s for part in plan) <= gpu_check.LIMIT_S - 30  # start-up and writing
    for part in plan:
        assert f"| {part.name} | {part.budget_s} |" in gpu_check.__doc__
    assert f"| **total** | **{sum(p.budget_s for p in plan)}** |" in gpu_check.__doc__


def test_the_gpu_check_report_is_strict_json_and_a_table(tmp_path: Path) -> None:
    part = {"part": "probe-step", "budget_s": 75, "seconds": float("nan"), "status": "ok", "command": "x", "tail": []}
    gpu_check.write_report(tmp_path, {"gpu": "H100", "commit": None, "seconds": 1.0, "parts": [part]})
    assert strict(tmp_path / "gpu_check.json")["parts"][0]["seconds"] is None
    assert "| probe-step | 75 |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_gpu_check_refuses_without_cuda(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())
