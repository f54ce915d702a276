"""Stopping a long command on a signal or a fault, on every process of a run at once.

`exit_on_fault(body, style, resume)` is the front end of the long commands (train.py, `python -m retrieval`,
`python -m reproduce`): `utils.errors.exit_on_user_error` plus the following. Longer than 300 lines: signals, the
DDP watcher and the one-paragraph reports share state (who stopped first, why) that splitting would scatter.

- **Signals.** SIGTERM (a scheduler's time limit or preemption, `timeout`, Kubernetes) and SIGINT (Ctrl-C) are
  caught while ``body`` runs. Inside a Lightning loop with a `utils.graceful_stop.GracefulStop` callback the stop
  waits for the end of the batch; anywhere else it happens at once (every file the project writes is written
  atomically, so no point is unsafe for files). The command prints one paragraph, ``Stopped by SIGTERM at step 6
  ... <resume>``, and exits 128 + the signal (143, 130). A second Ctrl-C ends the process at once; a second SIGTERM
  is ignored (`timeout` sends one to the command and one to its process group).
- **DDP.** One rank's stop, user error or death ends every rank, with one paragraph and one exit code
  (`utils.ranks`).

torch and Lightning are imported only once a run uses them, so that `--help` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from utils import ranks
from utils.errors import OptionStyle, exit_on_user_error, find_user_error, python_style
from utils.ranks import Quiet

T = TypeVar("T")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_RESUME = "Run the same command again."


class Stopped(SystemExit):
    """The command stops on signal ``signum``: exit code 128 + ``signum``; ``where`` says at which point."""

    def __init__(self, signum: int, where: str = ""):
        super().__init__(128 + signum)
        self.signum, self.where = signum, where

    @property
    def name(self) -> str:
        return "Ctrl-C (SIGINT)" if self.signum == signal.SIGINT else signal.Signals(self.signum).name

    def paragraph(self, resume: str) -> str:
        where = f" {self.where}" if self.where else ""
        return f"Stopped by {self.name}{where}, before the command finished. {resume}"


@dataclass
class _State:
    catching: bool = False  # exit_on_fault's handlers are installed
    signum: int | None = None  # the first signal caught
    trainer: Any = None  # the trainer of the last GracefulStop: while it runs, a stop waits for its batch end
    resume: Callable[[], str] = lambda: DEFAULT_RESUME


_state = _State()


def signal_received() -> int | None:
    """The first SIGTERM or SIGINT caught since the command started, or None."""
    return _state.signum


def check_stop(where: str = "") -> None:
    """Raise `Stopped` if a signal was caught and not acted on yet (a point between two loops is safe)."""
    if _state.signum is not None:
        raise Stopped(_state.signum, where)


def _deferring() -> bool:
    trainer = _state.trainer
    return trainer is not None and str(getattr(trainer.state.status, "value", "")) == "running"


def _caught(signum: int, frame: object) -> None:
    if _state.signum is not None:
        if signum == signal.SIGINT:  # Ctrl-C again: the user wants out now
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        return
    _state.signum = signum
    if not _deferring():
        raise Stopped(signum)
    # `timeout` and SLURM signal every process, the loader's workers too, and torch's workers obey a SIGTERM from anyone
    # but the loader: torch's SIGCHLD handler would raise their deaths in the middle of this batch. The batch has its
    # data; the stop comes at its end (a batch still to be fetched from them fails, and stops the command there).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def take_signals() -> None:
    """Put this module's handlers (back) in place, if a front end is catching signals (over Lightning's own)."""
    if _state.catching:
        for signum in SIGNALS:
            signal.signal(signum, _caught)


def _unraisable(hook: Callable[[Any], object]) -> Callable[[Any], object]:
    """``hook``, less the loader's complaints, after a stop, about the workers the same signal ended (it raises them
    while it shuts the workers down in ``__del__``, where Python prints them as ignored exceptions)."""

    def quieter(unraisable: Any) -> object:
        if _state.signum is not None and unraisable.exc_value is not None and _worker_killed(unraisable.exc_value):
            return None
        return hook(unraisable)

    return quieter


@contextmanager
def _catching(resume: Callable[[], str]) -> Iterator[None]:
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    _state.catching, _state.resume, _state.signum, _state.trainer = True, resume, None, None
    ranks.reset(resume)
    take_signals()
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if _state.signum is None:  # else the workers' last complaints may come as the process ends
            sys.unraisablehook = hook
        _state.catching = False


def attach(trainer: Any) -> None:
    """A trainer with a GracefulStop starts: while it runs, a stop waits for its batch end; note its ranks."""
    _state.trainer = trainer
    ranks.attach(trainer, watch=_state.catching)


def _worker_killed(err: BaseException) -> bool:
    """Whether ``err`` is the loader's error for a worker process that a signal ended."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if "DataLoader worker" in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _reporting(body: Callable[[], T]) -> T:
    try:
        return body()
    except BaseException as caught:
        err = caught
        if _state.signum is not None and not isinstance(caught, SystemExit) and find_user_error(caught) is None:
            # what the signal did to other processes: `timeout` and SLURM signal the loader's workers too, which
            # die; fetching from them fails (EOFError, ConnectionResetError, "DataLoader worker ... exited")
            err = Stopped(_state.signum)
        plain_exit = isinstance(err, SystemExit) and not isinstance(err, (Stopped, Quiet))
        if ranks.state.world > 1 and not plain_exit:
            err = ranks.end(err)
        if err is caught:
            raise
        raise err from None


def exit_on_fault(
    body: Callable[[], T], style: OptionStyle = python_style, resume: Callable[[], str] | None = None
) -> T:
    """Run ``body`` as a long command: `exit_on_user_error` with signals caught, `Stopped` reported as one paragraph
    (``resume()``: how to go on, in the command's own terms) and exit 128 + the signal, and DDP faults ended on every
    rank with one paragraph and one exit code (module docstring)."""
    with _catching(resume or (lambda: DEFAULT_RESUME)):
        try:
            return exit_on_user_error(lambda: _reporting(body), style)
        except Stopped as stop:
            print(f"\n{stop.paragraph(_state.resume())}", file=sys.stderr, flush=True)
            raise SystemExit(stop.code) from None
        finally:
            if ranks.state.ending and ranks.state.world > 1:
                ranks.leave()


def cli_exit_code(body: Callable[[], object], style: OptionStyle, resume: Callable[[], str] | None = None) -> int:
    """`exit_on_fault` for a command-line tool: its exit code (0 when ``body`` returns)."""
    try:
        exit_on_fault(body, style, resume)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0
