"""`python -m reproduce` (the rows, --dry-run, --pipeline end to end, the stand-ins, resume, failures) and
`bench.gpu_check`'s CPU-checkable parts (its plan fits 8 minutes, each part's command parses, the CUDA-only tests it
finds, its report, its refusal without CUDA)."""

from __future__ import annotations

import importlib
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
from reproduce.stand_ins import write_stand_in
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
        assert f"  note: {row.note}" in block if row.note else "note:" not in block
    assert f"data=bsds500 under {tmp_path}: present" in "\n".join(blocks["sam-bsds500-edges"])
    assert "sam-bsds500-edges: data" not in missing and "matcher-fss1000-1shot: data" in missing
    assert "github.com/HKUSTCV/FSS-1000" in missing and "--set sam.download=true" in missing


def test_every_size_of_the_dinov2_tables_is_a_row_with_its_value() -> None:
    """Tables 4, 10 and 11: every dataset, setting and model size is a row, and its value is the table's."""
    expected = {}
    for dataset, sizes in rows.TABLE_10.items():
        for size, (lin, ms) in sizes.items():
            expected |= {f"dinov2-{dataset}-lin-{size}": lin, f"dinov2-{dataset}-ms-{size}": ms}
    for dataset, sizes in rows.TABLE_11.items():
        for size, values in sizes.items():
            expected |= {f"dinov2-{dataset}-{kind}-{size}": v for kind, v in zip(("lin1", "lin4", "dpt"), values)}
    for size, (knn, linear) in rows.TABLE_4.items():
        expected |= {f"dinov2-imagenet-knn-{size}": knn, f"dinov2-imagenet-linear-{size}": linear}
    for name, value in expected.items():
        row = rows.BY_NAME[name]
        assert list(row.values.values()) == [value] and row.backbone == f"dinov2_{name.rsplit('-', 1)[1]}"
        assert "Table" in row.source and row.tolerance > 0 and row.gpu_minutes > 0
    assert len(rows.BY_NAME) == len(rows.ROWS)  # names are unique


def test_the_stand_ins_are_read_by_the_real_datamodules(tmp_path: Path) -> None:
    from datamodules.classification.imagefolder import ImageFolderDataModule
    from datamodules.depth.kitti import KITTIDataModule
    from datamodules.segmentation.cityscapes import CityscapesDataModule
    from datamodules.segmentation.voc import VOC2012DataModule

    voc = VOC2012DataModule(root=str(write_stand_in("voc2012", tmp_path)), num_workers=0, short_side=56)
    voc.setup("validate")
    labels = [batch["label"] for batch in voc.val_dataloader()]
    assert len(labels) == 2 and 255 in labels[0] and int(max(x[x < 255].max() for x in labels)) <= 8
    city = CityscapesDataModule(root=str(write_stand_in("cityscapes", tmp_path)), num_workers=0, short_side=56)
    city.setup("validate")
    values = set(torch.cat([batch["label"].flatten() for batch in city.val_dataloader()]).tolist())
    assert values <= {*range(8), 255} and len(values - {255}) > 1  # trainIds 0..7, labelId 0 ignored
    write_stand_in("kitti", tmp_path)
    kitti = KITTIDataModule(root=str(tmp_path), num_workers=0)
    lines = (tmp_path / "kitti" / "kitti_eigen_test.txt").read_text().splitlines()
    assert len(kitti._samples("test")) == len(lines) - 1 and lines[-1].split()[1] == "None"  # the None line skipped
    write_stand_in("imagenet", tmp_path)
    folders = ImageFolderDataModule(root=str(tmp_path / "imagenet"), splits=["train", "val"], num_workers=0)
    folders.setup("test")
    assert len(folders.class_names) == 4 and [len(part) for part in folders.sets] == [24, 8]
    assert write_stand_in("voc2012", tmp_path) == tmp_path / "voc2012"  # an existing stand-in is kept


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


def test_each_gpu_check_part_is_a_command_its_script_accepts() -> None:
    for part in gpu_check.parts(Path("out")):
        args = list(part.command[1:])
        if args[:2] == ["-m", "pytest"]:
            tests = [a for a in args if "::" in a]
            assert tests and all((ROOT / t.split("::")[0]).is_file() for t in tests), part
        elif args[0] == "-c":
            compile(args[1], part.name, "exec")
            assert callable(importlib.import_module("ops.losses").self_check_problem)
        else:
            module = importlib.import_module(args[1] if args[1] != "reproduce" else "reproduce.__main__")
            module.build_parser().parse_args(args[2:])  # exits (SystemExit) on an option the script lacks


def test_the_gpu_check_runs_every_test_that_skips_without_cuda() -> None:
    found = gpu_check.cuda_tests()
    assert "tests/test_fast_extraction.py::test_gpu_decoding_matches_cpu_decoding" in found  # "cuda" not in its name
    assert "tests/test_losses.py::test_cuda_self_check_passes" in found
    assert not any("refuses_without_cuda" in test for test in found)  # skipped WITH cuda: not a CUDA test
    source = {path.name: path.read_text() for path in (ROOT / "tests").glob("test_*.py")}
    assert all(f"def {test.split('::')[1]}(" in source[test.split("::")[0].split("/")[1]] for test in found)


def test_the_gpu_check_plan_prints_on_any_machine(capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main(["--plan"]) == 0
    said = capsys.readouterr().out
    assert all(f"{part.name} (budget {part.budget_s} s): " in said for part in gpu_check.parts(Path()))
    assert f"limit {gpu_check.LIMIT_S} s" in said


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
