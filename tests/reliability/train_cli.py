"""train.py: bad overrides, and user errors raised while Hydra builds the objects."""

from __future__ import annotations

from pathlib import Path

from datamodules.synthetic.ade20k import write_ade20k_like
from tests.reliability import TINY_TRAIN, Case

CASES = [
    # Hydra's own message for an unknown key was clear, but exited with 1 like a crash.
    Case("train-unknown-override", "clear", argv=("train.py", "foo=bar"), names=("foo",)),
    Case("train-unknown-choice", "clear", argv=("train.py", "head=no_such_head"), names=("no_such_head",)),
    Case(
        "train-head-checkpoint-missing",
        "wrapped",
        argv=("train.py", *TINY_TRAIN, "head.checkpoint={tmp}/no_such_head.pth"),
        names=("{tmp}/no_such_head.pth",),
        absent=("logs/*/runs/*/checkpoints/*",),
    ),
]


def _ade_with_bad_validation_image(tmp: Path) -> None:
    write_ade20k_like(tmp / "ade", 8, 4)
    (tmp / "ade" / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000001.jpg").write_text("garbage")


CASES.append(
    # Raised inside a loader worker process: the worker's traceback must not reach the user.
    Case(
        "train-bad-image-in-loader-worker",
        "clear",
        argv=("train.py", *TINY_TRAIN, "data.num_workers=2"),
        setup=_ade_with_bad_validation_image,
        names=("ADE_val_00000001.jpg",),
    )
)

CASES += [
    Case(
        "train-gpu-without-gpu",
        "wrapped",
        argv=("train.py", *TINY_TRAIN, "trainer=gpu"),
        names=("trainer=cpu",),
    ),
    Case(
        "train-max-steps-zero",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "trainer.max_steps=0"),
        names=("trainer.max_steps=0",),
    ),
    Case(
        "train-val-interval-zero",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "trainer.val_check_interval=0"),
        names=("trainer.val_check_interval=0",),
    ),
    Case(
        "train-seed-not-int",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "seed=abc"),
        names=("seed=abc",),
    ),
    Case(
        "train-bad-precision",
        "wrapped",
        argv=("train.py", *TINY_TRAIN, "trainer.precision=bad"),
        names=("trainer", "'bad'"),
    ),
    Case(
        "train-negative-lr",
        "wrapped",
        argv=("train.py", *TINY_TRAIN, "head.lr=-1"),
        names=("lr=-1",),
    ),
    Case(
        "train-unknown-backbone-name",
        "wrapped",
        argv=("train.py", *TINY_TRAIN, "backbone.name=foo"),
        names=("'foo'",),
    ),
]
