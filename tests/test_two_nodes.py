"""Two nodes, simulated on one machine: separately launched processes (two `torchrun --nnodes 2` commands, or two
tasks with srun's environment) that share one folder, as the recipes of docs/cluster.md run them.

Each launch is real: its processes meet over gloo on 127.0.0.1 and share nothing but the folder. The runs are the
cached quickstart on the tiny fixture backbone: 12 training images, 2 per batch on each of the 2 ranks, so an epoch
is 3 steps and step 4 is in the middle of the second one.

About 75 s on a busy 2-core machine; the index and srun tests (`pytest -m slow`) about 80 s more.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from tests.fixture_paths import TINY_CHECKPOINT
from tests.launch import ROOT, slurm_job_port_free, srun_tasks, tiny_extraction, torchrun_nodes, wait_all

SIGNAL = "tests.launch.SignalAtStep"


def cached_run(shared: Path, *overrides: str) -> list[str]:
    """train.py's arguments: the tiny cached quickstart on 2 nodes of 1 CPU process, everything under ``shared``."""
    return [
        "train.py",
        "experiment=cached_quickstart",
        f"backbone.checkpoint={TINY_CHECKPOINT}",
        "backbone.embed_dim=64",
        "backbone.depth=4",
        "backbone.num_heads=4",
        f"paths.root_dir={shared}",
        f"data.root={shared / 'ade'}",
        "data.generate_n_train=12",
        "data.generate_n_val=2",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.crop_size=56",
        "data.short_side=56",
        "head.stride=28",
        "feature_cache.samples_per_shard=2",
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        *overrides,
    ]


def signals_at(step: int, *signals: str) -> list[str]:
    """Overrides that make every rank send itself ``signals`` when training step ``step`` ends."""
    names = ",".join(signals)
    return [
        f"+callbacks.signal._target_={SIGNAL}",
        f"+callbacks.signal.step={step}",
        f"+callbacks.signal.signals=[{names}]",
    ]


def output(logs: Path) -> str:
    return "\n".join(Path(f"{logs}-{rank}.log").read_text() for rank in (0, 1))


def launched(processes: list[subprocess.Popen], logs: Path, expected: int = 0) -> None:
    codes = wait_all(processes)
    assert codes == [expected] * 2 if expected == 0 else all(codes), (codes, output(logs)[-6000:])


def losses(run: Path) -> dict[int, float]:
    """The logged training loss of every step, the later log version winning (a resumed run's)."""
    found = {}
    for table in sorted(run.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        for row in csv.DictReader(table.open()):
            if row.get("train/loss"):
                found[int(row["step"])] = float(row["train/loss"])
    return found


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared folder holding one uninterrupted run (``runs/torchrun-full``), which extracted the feature cache."""
    folder = tmp_path_factory.mktemp("shared")
    launched(torchrun_nodes(cached_run(folder), folder / "full", rdzv_id="full"), folder / "full")
    return folder


def run_folder(shared: Path, name: str) -> Path:
    return shared / "logs" / "cached_quickstart" / "runs" / name


def test_two_torchrun_nodes_extract_train_and_resume_in_one_shared_folder(shared: Path) -> None:
    full = run_folder(shared, "torchrun-full")
    # one run folder for both nodes; every file in it has one writer
    assert [p.name for p in full.parent.iterdir()] == ["torchrun-full"]
    assert {p.name for p in full.iterdir()} >= {".hydra", "config.yaml", "metrics.json", "train.log", "train_rank1.log"}
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in Path(f"{shared / 'full'}-1.log").read_text()
    # the extraction: 6 shards of 2 samples, split between the ranks (rank 0 alone extracts 3: no manifest then)
    (cache,) = [p for p in (shared / "data" / "feature_cache").iterdir() if p.is_dir()]
    assert len(list(cache.glob("shard_*.json"))) == 6 and (cache / "manifest.json").is_file()
    assert output(shared / "full").count("extracted in") == 1

    # Another job holds the cache's lock and has not sealed it (its manifest set aside): this job's rank 0 waits
    # while its rank 1, which finds no manifest either, must not start an extraction of its own; once the lock is
    # free, both ranks reuse the cache. The job is then stopped by SIGTERM at step 4, mid-epoch.
    lock, manifest, aside = FileLock(f"{cache}.lock"), cache / "manifest.json", cache / "manifest.aside"
    cut = shared / "cut"
    with lock:
        manifest.rename(aside)
        processes = torchrun_nodes(cached_run(shared, *signals_at(4, "SIGTERM")), cut, rdzv_id="cut")
        deadline = time.monotonic() + 240
        # until rank 0 waits for the lock and rank 1 has entered the extraction's predict loop (it did so, before
        # rank 0 decided for it, when it found no manifest)
        while "waiting for it to finish" not in Path(f"{cut}-0.log").read_text() or (
            "GLOBAL_RANK: 1" not in Path(f"{cut}-1.log").read_text()
        ):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), output(cut)[-6000:]
            time.sleep(0.5)
        aside.rename(manifest)
    launched(processes, cut, expected=143)
    assert "reusing" in output(cut) and output(cut).count("extracted in") == 0
    stopped = run_folder(shared, "torchrun-cut")
    assert sorted(losses(stopped)) == [0, 1, 2, 3]  # stopped after 4 steps (logged from step 0)

    # resumed on both nodes from last.ckpt: the run continues mid-epoch as the uninterrupted one did
    resume = shared / "resume"
    last = stopped / "checkpoints" / "last.ckpt"
    launched(torchrun_nodes(cached_run(shared, f"ckpt_path={last}"), resume), resume)
    assert losses(stopped) == losses(full) and sorted(losses(full)) == [0, 1, 2, 3, 4, 5]
    assert json.loads((stopped / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())


@pytest.mark.slow
def test_retrieval_index_on_two_torchrun_nodes(shared: Path, tmp_path: Path) -> None:
    images = shared / "ade" / "ADEChallengeData2016" / "images"
    tiny = ["--checkpoint", str(TINY_CHECKPOINT), "--embed-dim", "64", "--depth", "4", "--num-heads", "4"]
    options = [*tiny, "--device", "cpu", "--size", "84", "--num-workers", "0", "--batch-size", "2"]
    options += ["--samples-per-shard", "2"]
    index = ["-m", "retrieval", "index", str(images), *options]
    logs = tmp_path / "index"
    launched(torchrun_nodes([*index, "--out", str(shared / "index"), "--num-nodes", "2"], logs), logs)
    assert "Indexed 14 images" in output(logs)
    alone = subprocess.run(
        [sys.executable, *index, "--out", str(tmp_path / "alone")],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    for name in ("paths.json", "spec.json"):
        assert json.loads((shared / "index" / name).read_text()) == json.loads((tmp_path / "alone" / name).read_text())
    (part,) = (shared / "index" / "parts").iterdir()
    (alone_part,) = (tmp_path / "alone" / "parts").iterdir()
    for shard in sorted(alone_part.glob("embedding_*.npy")):
        assert np.array_equal(np.load(part / shard.name), np.load(shard)), shard.name


@pytest.mark.slow
def test_srun_tasks_requeue_on_slurms_signal_and_resume(shared: Path, tmp_path: Path) -> None:
    """The sbatch recipe's tasks: Lightning's SLURM environment from srun's variables, its requeue on SIGUSR1
    (a checkpoint, then `scontrol requeue`, here a script on PATH that records its call), SLURM's SIGTERM; then the
    requeued job (the same job id) resumes from that checkpoint by itself and ends as the uninterrupted run."""
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_CALLS"\n')
    scontrol.chmod(0o755)
    env = {"PATH": f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}", "SCONTROL_CALLS": str(tmp_path / "calls")}
    job = slurm_job_port_free()  # Lightning's SLURM port: 15000 + the job id's last four digits
    first, again = tmp_path / "first", tmp_path / "again"
    launched(srun_tasks(cached_run(shared, *signals_at(4, "SIGUSR1", "SIGTERM")), first, job, **env), first, 143)
    assert (tmp_path / "calls").read_text() == f"requeue {job}\n"  # rank 0 alone
    run = run_folder(shared, f"slurm-{job}")
    assert (run / "hpc_ckpt_1.ckpt").is_file()
    launched(srun_tasks(cached_run(shared), again, job, SLURM_RESTART_COUNT="1", **env), again)
    assert f"Restored all states from the checkpoint at {run / 'hpc_ckpt_1.ckpt'}" in output(again)
    full = run_folder(shared, "torchrun-full")
    assert losses(run) == losses(full)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())


def test_two_separately_launched_extractions_of_one_key_wait_and_share(tmp_path: Path) -> None:
    from datamodules.synthetic.ade20k import write_ade20k_like

    ade = tmp_path / "ade"
    write_ade20k_like(ade, n_train=5, n_val=2, size_range=((40, 60), (50, 70)))
    record, go = tmp_path / "shards.jsonl", tmp_path / "go"

    def job(name: str, root: Path, *hold: Path) -> tuple[subprocess.Popen, Path]:
        command = [sys.executable, "-m", "tests.launch", "extract", str(root), str(ade)]
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen([*command, str(record), *map(str, hold)], cwd=ROOT, stdout=out, stderr=out)
        return process, log

    def finished(process: subprocess.Popen, log: Path) -> Path:
        """The cache folder the job used, once it has ended."""
        assert process.wait(240) == 0, log.read_text()[-3000:]
        (line,) = [line for line in log.read_text().splitlines() if line.startswith("CACHE ")]
        return Path(line.removeprefix("CACHE "))

    def until(ready: object, *jobs: tuple[subprocess.Popen, Path]) -> None:
        deadline = time.monotonic() + 120
        while not ready():
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in jobs), jobs[-1][1].read_text()
            time.sleep(0.1)

    first = job("first", tmp_path / "cache", go)
    until(record.is_file, first)  # the first job holds the lock and has written a shard; it waits for `go`
    second = job("second", tmp_path / "cache")
    until(lambda: "another run is extracting into" in second[1].read_text(), first, second)
    go.touch()
    shared = finished(*first)
    assert finished(*second) == shared
    written = [json.loads(line) for line in record.read_text().splitlines()]
    assert {w["pid"] for w in written} == {first[0].pid} and len(written) == 2  # 5 samples, 3 per shard
    reference = tiny_extraction(tmp_path / "alone", ade)  # in this process
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in sorted(reference.glob("*.npy")):
        assert (shared / path.name).read_bytes() == path.read_bytes(), path.name


def test_slurms_signal_during_an_extraction_requeues_without_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's own requeue would save the extractor (a whole backbone) as hpc_ckpt_1.ckpt and load it into the
    next run's trainer; the extraction requeues without saving, and its shards stay for the requeued job."""
    from datamodules.feature_cache.extraction import _OpenShard
    from datamodules.synthetic.ade20k import write_ade20k_like

    monkeypatch.chdir(tmp_path)  # where Lightning's own requeue would save its checkpoint (default_root_dir)
    write_ade20k_like(tmp_path / "ade", n_train=5, n_val=2, size_range=((40, 60), (50, 70)))
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "extract"}.items():
        monkeypatch.setenv(name, value)
    for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.setenv(name, "0")
    commit = _OpenShard.commit

    def commit_then_signal(self: _OpenShard) -> None:
        commit(self)
        if self.shard == 0:
            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's `--signal=USR1@90`

    monkeypatch.setattr(_OpenShard, "commit", commit_then_signal)
    before = signal.getsignal(signal.SIGUSR1)
    cached = tiny_extraction(tmp_path / "cache", tmp_path / "ade")
    assert (tmp_path / "calls").read_text() == "requeue 4242\n"
    assert not list(tmp_path.rglob("hpc_ckpt_*")) and (cached / "manifest.json").is_file()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_the_processes_of_a_launch_name_one_run_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.errors import UserError
    from utils.run_dirs import hydra_subdir, log_name, unique_name

    for name in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))] + ["WORLD_SIZE", "RANK"]:
        monkeypatch.delenv(name, raising=False)
    assert not unique_name().startswith(("torchrun", "slurm")) and hydra_subdir() == ".hydra"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "ade-run1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert unique_name() == "torchrun-ade-run1"
    assert (hydra_subdir(), log_name("train")) == (None, "train_rank1")  # .hydra/ and train.log are rank 0's
    monkeypatch.setenv("RANK", "0")
    assert (hydra_subdir(), log_name("train")) == (".hydra", "train")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # a --master-addr launch without --rdzv-id
    with pytest.raises(UserError, match="--rdzv-id NAME"):
        unique_name()
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name)
    for name, value in {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_ID": "4242"}.items():
        monkeypatch.setenv(name, value)
    assert unique_name() == "slurm-4242" and log_name("train") == "train_rank1"  # the same after a requeue
