"""train.py: bad overrides, and user errors raised while Hydra builds the objects."""

from __future__ import annotations

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
        needs_fixtures=True,
    ),
]
