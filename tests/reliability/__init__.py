"""The table of bad inputs and faults that tests/test_reliability.py runs as a user would.

Each module here holds one area's `CASES`. A case is one thing a user (or an adversary) does: a command line run
in a fresh folder (`argv`), or a call of the Python API (`call`). What main did with it before issue 11 is kept in
`before`, so the "Reliability" table of docs/reliability.md is counted from this table, not written by hand.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.fixture_paths import TINY_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]

Before = Literal["traceback", "wrapped", "silent", "lost", "code", "clear"]
"""What main did: a Python traceback; the right message wrapped by Hydra ("Error in call to target ...", a repr,
exit 1); a silent NaN or wrong result; data lost or mixed; code run from a file; or already one clear paragraph
(kept as a regression case)."""


@dataclass(frozen=True)
class Result:
    """A finished case: exit code (0 for an API call that returned) and everything it printed or raised."""

    exit_code: int
    text: str


@dataclass(frozen=True)
class Case:
    """One bad input or fault.

    argv: the command after ``python``, run in a fresh folder ``{tmp}`` with an empty torch.hub cache and no
        network: ``("train.py", "data.batch_size=0")``, ``("-m", "visualize.pca", ...)``. ``train.py`` is the
        repository's. ``{tmp}``, ``{repo}`` and ``{tiny}`` (the tiny fixture backbone) are substituted.
    call: instead of argv, a Python API call given ``tmp``; it must raise ``ValueError`` (exit code 2 here).
    setup: makes the case's files in ``tmp`` first.
    names: what the message must name (the file, option or value), after substitution.
    absent: globs under ``tmp`` that must not exist afterwards (no partial output).
    check: further assertions on the outcome (for cases whose fix is a correct result, not an error).
    exit_code: 2 for a user error; 0 where the fix is that the command now does the right thing.
    fresh: run argv in a new interpreter (import-time behaviour); otherwise it is forked from a warm one.
    memory_limit_gb: for argv, the address space the command may use (``RLIMIT_AS``), for inputs that once made a
        run allocate without bound: a regression then fails the case instead of exhausting the machine. 8 GB is
        what a tiny train.py run needs (torch reserves address space it does not use).
    """

    id: str
    before: Before
    argv: tuple[str, ...] = ()
    call: Callable[[Path], object] | None = None
    setup: Callable[[Path], None] | None = None
    names: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    check: Callable[[Path, Result], None] | None = None
    exit_code: int = 2
    timeout: float = 240.0
    fresh: bool = False
    env: dict[str, str] = field(default_factory=dict)
    memory_limit_gb: float | None = None


# Train.py overrides that make any run take seconds: the tiny fixture backbone, 56 px crops, 2 steps.
TINY_TRAIN = (
    "experiment=quickstart",
    "backbone.checkpoint={tiny}",
    "backbone.embed_dim=64",
    "backbone.depth=4",
    "backbone.num_heads=4",
    "data.root={tmp}/ade",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.crop_size=56",
    "data.short_side=56",
    "head.stride=28",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
)


def substitute(text: str, tmp: Path) -> str:
    return text.format(tmp=tmp, repo=REPO, tiny=TINY_CHECKPOINT)


def offline_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a case: an empty hub cache under ``tmp`` and every URL routed to a closed port."""
    env = dict(os.environ)
    env.update(
        TORCH_HOME=str(tmp / "torch_home"),
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        NO_PROXY="",
        no_proxy="",
        PYTHONPATH=str(REPO),
        HYDRA_FULL_ERROR="0",
    )
    env.update(extra or {})
    return env


class _ForkServer:
    """The session's `_fork_server` process (started on first use, ended with the tests)."""

    process: subprocess.Popen | None = None

    @classmethod
    def run(cls, args: list[str], tmp: Path, env: dict[str, str], timeout: float, memory_limit: int | None) -> Result:
        if cls.process is None or cls.process.poll() is not None:
            cls.process = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability._fork_server"],
                cwd=REPO,
                env=offline_env(tmp),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            atexit.register(cls.process.kill)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "output.txt"
            request = {
                "argv": args,
                "cwd": str(tmp),
                "env": env,
                "timeout": timeout,
                "out": str(out),
                "memory_limit": memory_limit,
            }
            cls.process.stdin.write(json.dumps(request) + "\n")
            cls.process.stdin.flush()
            reply = json.loads(cls.process.stdout.readline())
            return Result(reply["exit_code"], out.read_text())


def limit_memory(n_bytes: int | None) -> None:
    """Cap this process's address space at ``n_bytes`` (``RLIMIT_AS``; None: no cap). Called in a child only."""
    if n_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (n_bytes, n_bytes))


def run_cli(
    argv: tuple[str, ...],
    tmp: Path,
    env: dict[str, str],
    timeout: float,
    fresh: bool = False,
    memory_limit_gb: float | None = None,
) -> Result:
    """Run ``python ARGV`` in ``tmp``: forked from the warm server, or in a new interpreter when ``fresh``; with
    at most ``memory_limit_gb`` of address space when given."""
    args = [substitute(a, tmp) for a in argv]
    if args and args[0] == "train.py":
        args[0] = str(REPO / "train.py")
    memory_limit = None if memory_limit_gb is None else int(memory_limit_gb * (1 << 30))
    if not fresh:
        return _ForkServer.run(args, tmp, offline_env(tmp, env), timeout, memory_limit)
    proc = subprocess.run(
        [sys.executable, *args],
        preexec_fn=functools.partial(limit_memory, memory_limit),
        check=False,
        cwd=tmp,
        env=offline_env(tmp, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout + proc.stderr)


def all_cases() -> list[Case]:
    """Every area's cases, in file order."""
    import importlib
    import pkgutil

    cases: list[Case] = []
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):
            continue
        cases.extend(importlib.import_module(f"{__name__}.{module.name}").CASES)
    return cases


BEFORE_ROWS = {
    "traceback": "Python traceback",
    "wrapped": "right message wrapped by Hydra, exit 1",
    "silent": "silent NaN or wrong result",
    "lost": "data lost or mixed",
    "code": "code run from a file",
    "clear": "one clear paragraph",
}


def reliability_table(cases: list[Case]) -> str:
    """The table of docs/reliability.md: what main did with each case before issue 11, and what it does now (all tests pass)."""
    errors = sum(case.exit_code == 2 for case in cases)
    rows = [
        "| outcome | before | now |",
        "| --- | ---: | ---: |",
        *(
            f"| {label} | {sum(c.before == key for c in cases)} | 0 |"
            for key, label in BEFORE_ROWS.items()
            if key != "clear"
        ),
        f"| one clear paragraph, exit code 2 | {sum(c.before == 'clear' for c in cases)} | {errors} |",
        f"| the right result (where the fix was to work, not to refuse) | 0 | {len(cases) - errors} |",
        f"| **bad inputs and faults tried** | **{len(cases)}** | **{len(cases)}** |",
    ]
    return "\n".join(rows)
