"""train.py: bad overrides and options."""

from __future__ import annotations

from tests.reliability import TINY_TRAIN, Case

CASES = [
    Case("train-unknown-override", "clear", argv=("train.py", "foo=bar"), names=("foo",)),
    Case(
        "train-batch-size-zero",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "data.batch_size=0"),
        names=("data.batch_size=0",),
        needs_fixtures=True,
    ),
]
