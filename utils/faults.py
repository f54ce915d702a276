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
- **DDP.** The rank that ends first for a reason of its own (a signal, a `UserError`, an exception) records its exit
  code in the process group's store, prints its paragraph (or traceback) and closes its connections, so that ranks
  waiting for it in a collective fail at once instead of after the timeout; they find the record and exit with the
  same code without a second paragraph. A rank whose peer vanished without a record (SIGKILL, the out-of-memory
  killer) says so, with ``resume``, and exits 1. Rank 0 holds the store, so it waits (at most `WAIT_S`) for the
  others before it exits.

torch and Lightning are imported only once a run uses them, so that `--help` stays fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from utils.errors import OptionStyle, exit_on_user_error, find_user_error, python_style

T = TypeVar("T")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
RECORD = "faults/record"  # the store key of the first rank's {"code", "rank"}
LEFT = "faults/left"  # the store key counting the ranks that have left
WAIT_S = 10.0  # rank 0 waits at most this long for the other ranks to leave before it exits
GRACE_S = 10.0  # after a child rank failed, rank 0's main thread has this long to notice before the watcher ends it
# gloo's and the store's words for a connection whose other end is gone
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Connection was likely closed", "Broken pipe")
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


class Quiet(SystemExit):
    """Exit with another rank's code, whose paragraph that rank printed."""


@dataclass
class _State:
    catching: bool = False  # exit_on_fault's handlers are installed
    signum: int | None = None  # the first signal caught
    trainer: Any = None  # the trainer of the last GracefulStop: while it runs, a stop waits for its batch end
    resume: Callable[[], str] = lambda: DEFAULT_RESUME
    ending: bool = False  # the main thread is ending the command (the child watcher stands down)
    rank: int = 0
    world: int = 1
    store: Any = None  # the process group's store, kept past destroy_process_group
    store_lost: bool = False  # a call to the store failed: its host (rank 0) is gone
    children: list = field(default_factory=list)  # the ranks this process launched (Lightning's launcher, rank 0)


_state = _State()


def signal_received() -> int | None:
    """The first SIGTERM or SIGINT caught since the command started, or None."""
    return _state.signum


def check_stop(where: str = "") -> None:
    """Raise `Stopped` if a signal was caught and not acted on yet (a point between two loops is safe)."""
    if _state.signum is not None:
        raise Stopped(_state.signum, where)


def mark_ending() -> None:
    """The main thread has met an exception and is ending the command: the child watcher stands down."""
    _state.ending = True


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
    _state.catching, _state.resume, _state.signum, _state.ending = True, resume, None, False
    _state.trainer = _state.store = None
    _state.world, _state.store_lost = 1, False
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
    """A trainer with a GracefulStop starts: note it, the process group, and the ranks this process launched."""
    import torch.distributed as dist

    _state.trainer = trainer
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.distributed_c10d import _get_default_store  # torch has no public accessor

        _state.rank, _state.world, _state.store = dist.get_rank(), dist.get_world_size(), _get_default_store()
    procs = getattr(trainer.strategy.launcher, "procs", None)
    if _state.catching and procs and not _state.children:
        _state.children = list(procs)
        _disarm_lightning_observer()
        threading.Thread(target=_watch_children, name="faults-child-watch", daemon=True).start()


def _disarm_lightning_observer() -> None:
    """Lightning's launcher watches the ranks it started and, when one exits with a non-zero code, SIGKILLs them all
    and the launching process, without a word, within 5 s: also after an orderly stop (143) or a user error (2) whose
    paragraph this process was about to print. `_watch_children` takes its place."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver):
            thread._run = lambda: True  # its loop ends at its next check, having done nothing


def _watch_children() -> None:
    """End this process when a rank it launched failed and its main thread has not noticed within `GRACE_S` (it is
    waiting in a collective for the dead rank: NCCL waits for the timeout; gloo fails at once)."""
    failed_since = None
    while not _state.ending:
        time.sleep(1.0)
        if not any(proc.poll() not in (None, 0) for proc in _state.children):
            continue
        failed_since = failed_since or time.monotonic()
        if time.monotonic() - failed_since >= GRACE_S and not _state.ending:
            _state.ending = True
            record = published()
            if record is None:
                print(f"\nError: {_peer_lost_paragraph()}", file=sys.stderr, flush=True)
            os._exit(record["code"] if record else 1)


class PeerLost(RuntimeError):
    """The process that holds the run's store (rank 0) is gone."""


_store_lock = threading.Lock()  # the child watcher reads the store too; fd 2 must be put back by whoever muted it


def _store_call(call: Callable[[Any], T]) -> T | None:
    """``call(store)``, or None without a store or when its host is gone (then it is forgotten, `PeerLost` is due).

    torch's store client logs each failed attempt to fd 2 with a C++ stack trace, which would bury the paragraph
    that says what happened; there is no setting for it at run time, so fd 2 is muted for the call."""
    with _store_lock:
        store = _state.store
        if store is None:
            return None
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        try:
            return call(store)
        except Exception:  # noqa: BLE001 - torch raises DistNetworkError, DistStoreError or RuntimeError here
            _state.store, _state.store_lost = None, True
            return None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


def published() -> dict[str, int] | None:
    """The record of the rank that ended the run first, or None (none yet, or not a multi-process run)."""
    raw = _store_call(lambda store: store.get(RECORD) if store.check([RECORD]) else None)
    return None if raw is None else json.loads(raw)


def publish(code: int) -> bool:
    """Record ``code`` as the run's exit code unless another rank did first; whether this rank's record stands (it
    does when there is no store to ask)."""
    mine = json.dumps({"code": code, "rank": _state.rank})
    stored = _store_call(lambda store: store.compare_set(RECORD, "", mine).decode())
    return stored is None or stored == mine


def peer_stop() -> None:
    """Raise what another rank's record says (its code, quietly), or `PeerLost` if rank 0's store is gone."""
    record = published()
    if record is not None:
        raise Quiet(record["code"])
    if _state.store_lost:
        raise PeerLost("the process of rank 0, which holds the run's store, is gone")


def _exit_code(err: BaseException) -> int:
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else 1
    return 2 if find_user_error(err) is not None else 1


def _peer_lost(err: BaseException) -> bool:
    """Whether ``err`` says that another process of the run is gone (its connections closed)."""
    from torch.distributed import DistNetworkError

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, (DistNetworkError, PeerLost)) or any(words in str(current) for words in PEER_LOST):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _peer_lost_paragraph() -> str:
    dead = [(rank, proc) for rank, proc in enumerate(_state.children, 1) if proc.poll() not in (None, 0)]
    if dead:
        rank, proc = dead[0]
        code = proc.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        who = f"The process of rank {rank} (pid {proc.pid}) {how}"
    elif _state.store_lost:
        who = "The process of rank 0 is gone (killed by a signal, or by the out-of-memory killer?)"
    else:
        who = "Another process of this run ended without a word (killed by a signal, or by the out-of-memory killer?)"
    return f"{who}, so this {_state.world}-process run cannot go on and was stopped. {_state.resume()}"


def _end_distributed(err: BaseException) -> BaseException:
    """The exception this rank leaves with, once the run's record is settled and its connections are closed."""
    import torch.distributed as dist

    _state.ending = True
    record = published()
    if record is not None and record["rank"] != _state.rank:
        result: BaseException = Quiet(record["code"])
    elif record is None and _peer_lost(err):
        result = Quiet(1)
        if publish(1):
            print(f"\nError: {_peer_lost_paragraph()}", file=sys.stderr, flush=True)
    elif record is not None or publish(_exit_code(err)):
        result = err
    else:
        result = Quiet((published() or {"code": _exit_code(err)})["code"])
    if dist.is_initialized():
        dist.destroy_process_group()  # the ranks waiting for this one in a collective fail now
    return result


def _leave() -> None:
    """Tell rank 0 that this rank leaves; rank 0 waits for the others, who may still read the record from its store."""
    if _state.rank != 0:
        _store_call(lambda store: store.add(LEFT, 1))
        return
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if _state.children:  # the ranks this process started: wait for them to end
            if all(proc.poll() is not None for proc in _state.children):
                return
        else:
            left = _store_call(lambda store: store.add(LEFT, 0))
            if left is None or left >= _state.world - 1:
                return
        time.sleep(0.05)


def _worker_killed(err: BaseException) -> bool:
    """Whether ``err`` is the loader's error for a worker process killed by a signal. A SIGTERM sent to the whole
    process group (`timeout`, SLURM) ends the workers too: torch's worker handler obeys one from anyone but the
    loader; then the main process stops where it is, without waiting for the batch end."""
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
        if _state.signum is not None and not isinstance(caught, SystemExit) and _worker_killed(caught):
            err = Stopped(_state.signum)  # the loader's workers got the same SIGTERM
        plain_exit = isinstance(err, SystemExit) and not isinstance(err, (Stopped, Quiet))
        if _state.world > 1 and not plain_exit:
            err = _end_distributed(err)
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
            if _state.ending and _state.world > 1:
                _leave()


def cli_exit_code(body: Callable[[], object], style: OptionStyle, resume: Callable[[], str] | None = None) -> int:
    """`exit_on_fault` for a command-line tool: its exit code (0 when ``body`` returns)."""
    try:
        exit_on_fault(body, style, resume)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0
