"""train.py tried as a new user and as an adversary would: runs started together, killed generations, odd values,
head and data configs that do not fit together."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from tests.reliability import Case, Result

SMALL = ((40, 60), (50, 70))
N_TRAIN = 64


def _generate(root: str, n_train: int) -> None:
    from datamodules.synthetic import write_ade20k_like

    write_ade20k_like(root, n_train=n_train, n_val=2, size_range=SMALL)


def _training_images(root: Path) -> int:
    """What a quickstart run does with ``data.generate=true``: generate unless there, then read the training split."""
    from datamodules import ADE20kDataModule

    data = ADE20kDataModule(
        str(root), generate=True, generate_n_train=N_TRAIN, generate_n_val=2, num_workers=0, crop_size=42
    )
    data.prepare_data()
    data.setup("fit")
    return len(data.train_set)


def _start_writer(tmp: Path, n_train: int) -> multiprocessing.Process:
    """A process generating into ``tmp/ade``, returned once its first files are on disk."""
    writer = multiprocessing.get_context("spawn").Process(target=_generate, args=(str(tmp / "ade"), n_train))
    writer.start()
    deadline = time.monotonic() + 60
    while not list((tmp / "ade").glob("*ADEChallengeData2016*/images/training/*.jpg")):
        assert time.monotonic() < deadline and writer.is_alive(), "the writer never started"
        time.sleep(0.02)
    return writer


def run_while_generating(tmp: Path) -> None:
    """A second quickstart with the same data.root starts while the first is generating the synthetic set."""
    import datamodules  # noqa: F401 - imported before the writer starts, so that the run starts at once

    writer = _start_writer(tmp, N_TRAIN)
    seen = _training_images(tmp / "ade")
    writer.join(120)
    assert writer.exitcode == 0, f"the first writer failed with exit code {writer.exitcode}"
    assert seen == N_TRAIN, f"the second run trained on {seen} of the {N_TRAIN} generated images"


def generate_after_kill(tmp: Path) -> None:
    """A generation SIGKILLed mid-way, then a quickstart run that generates."""
    writer = _start_writer(tmp, 4000)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    assert not (tmp / "ade" / "ADEChallengeData2016").exists(), "a killed generation left a set that looks complete"
    assert _training_images(tmp / "ade") == N_TRAIN


def check_one_whole_set(tmp: Path, result: Result) -> None:
    out = tmp / "ade" / "ADEChallengeData2016"
    counts = {str(p.relative_to(out)): len(list(p.iterdir())) for p in sorted(out.glob("*/*"))}
    splits = (("training", N_TRAIN), ("validation", 2))
    assert counts == {f"{kind}/{split}": n for kind in ("annotations", "images") for split, n in splits}, counts
    assert not [p for p in (tmp / "ade").iterdir() if ".tmp-" in p.name], sorted((tmp / "ade").iterdir())


CASES = [
    # Two quickstarts with one data.root: one of them found the other's half-written set ("ADE20k not found").
    Case("adv-train-generate-together", "lost", call=run_while_generating, check=check_one_whole_set, exit_code=0),
    # A killed generation left a half set in place, which every later run took as complete.
    Case("adv-train-generate-killed", "lost", call=generate_after_kill, check=check_one_whole_set, exit_code=0),
]
