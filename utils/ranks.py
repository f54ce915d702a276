"""One rank's end is every rank's: the DDP half of `utils.faults`.

The rank that ends first for a reason of its own (a signal, a `UserError`, an exception) records its exit code in
the process group's store (`publish`), prints its paragraph (or traceback) and closes its connections (`end`), so that
ranks waiting for it in a collective fail at once instead of after the timeout; they find the record and leave with
the same code without a second paragraph (`Quiet`). A rank whose peer vanished without a record (SIGKILL, the
out-of-memory killer) says so, with the command's way to resume, and exits 1. Rank 0 holds the store, so it waits (at
most `WAIT_S`) for the others before it exits (`leave`). When Lightning started the ranks, rank 0 also watches them
(`_watch_children`): a rank stuck in a collective with a dead one (NCCL waits for the timeout) is ended in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from utils.errors import find_user_error

T = TypeVar("T")

RECORD = "faults/record"  # the store key of the first rank's {"code", "rank"}
LEFT = "faults/left"  # the store key counting the ranks that have left
WAIT_S = 10.0  # rank 0 waits at most this long for the other ranks to leave before it exits
GRACE_S = 10.0  # after a child rank failed, rank 0's main thread has this long to notice before the watcher ends it
# gloo's and the store's words for a connection whose other end is gone
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Connection was likely closed", "Broken pipe")


class Quiet(SystemExit):
    """Exit with another rank's code, whose paragraph that rank printed."""


class PeerLost(RuntimeError):
    """The process that holds the run's store (rank 0) is gone."""


@dataclass
class _Ranks:
    rank: int = 0
    world: int = 1
    store: Any = None  # the process group's store, kept past destroy_process_group
    store_lost: bool = False  # a call to the store failed: its host (rank 0) is gone
    children: list = field(default_factory=list)  # the ranks this process launched (Lightning's launcher, rank 0)
    ending: bool = False  # the main thread is ending the command (the child watcher stands down)
    resume: Callable[[], str] = lambda: "Run the same command again."


state = _Ranks()


def reset(resume: Callable[[], str]) -> None:
    """A command starts (one process runs one, tests several): a single process until `attach` learns otherwise."""
    state.rank, state.world, state.store, state.resume = 0, 1, None, resume
    state.store_lost = state.ending = False


def attach(trainer: Any, watch: bool) -> None:
    """A trainer starts: note the process group and, with ``watch``, watch the ranks this process launched."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.distributed_c10d import _get_default_store  # torch has no public accessor

        state.rank, state.world, state.store = dist.get_rank(), dist.get_world_size(), _get_default_store()
    procs = getattr(trainer.strategy.launcher, "procs", None)
    if watch and procs and not state.children:
        state.children = list(procs)
        _disarm_lightning_observer()
        threading.Thread(target=_watch_children, name="faults-child-watch", daemon=True).start()


def mark_ending() -> None:
    """The main thread has met an exception and is ending the command: the child watcher stands down."""
    state.ending = True


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
    while not state.ending:
        time.sleep(1.0)
        if not any(proc.poll() not in (None, 0) for proc in state.children):
            continue
        failed_since = failed_since or time.monotonic()
        if time.monotonic() - failed_since >= GRACE_S and not state.ending:
            state.ending = True
            record = published()
            if record is None:
                print(f"\nError: {_peer_lost_paragraph()}", file=sys.stderr, flush=True)
            os._exit(record["code"] if record else 1)


_store_lock = threading.Lock()  # the child watcher reads the store too; fd 2 must be put back by whoever muted it


def _store_call(call: Callable[[Any], T]) -> T | None:
    """``call(store)``, or None without a store or when its host is gone (then it is forgotten, `PeerLost` is due).

    torch's store client logs each failed attempt to fd 2 with a C++ stack trace, which would bury the paragraph
    that says what happened; there is no setting for it at run time, so fd 2 is muted for the call."""
    with _store_lock:
        store = state.store
        if store is None:
            return None
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        try:
            return call(store)
        except Exception:  # noqa: BLE001 - torch raises DistNetworkError, DistStoreError or RuntimeError here
            state.store, state.store_lost = None, True
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
    mine = json.dumps({"code": code, "rank": state.rank})
    stored = _store_call(lambda store: store.compare_set(RECORD, "", mine).decode())
    return stored is None or stored == mine


def peer_stop() -> None:
    """Raise what another rank's record says (its code, quietly), or `PeerLost` if rank 0's store is gone."""
    record = published()
    if record is not None:
        raise Quiet(record["code"])
    if state.store_lost:
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
    dead = [(rank, proc) for rank, proc in enumerate(state.children, 1) if proc.poll() not in (None, 0)]
    if dead:
        rank, proc = dead[0]
        code = proc.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        who = f"The process of rank {rank} (pid {proc.pid}) {how}"
    elif state.store_lost:
        who = "The process of rank 0 is gone (killed by a signal, or by the out-of-memory killer?)"
    else:
        who = "Another process of this run ended without a word (killed by a signal, or by the out-of-memory killer?)"
    return f"{who}, so this {state.world}-process run cannot go on and was stopped. {state.resume()}"


def end(err: BaseException) -> BaseException:
    """The exception this rank leaves with, once the run's record is settled and its connections are closed."""
    import torch.distributed as dist

    state.ending = True
    record = published()
    if record is not None and record["rank"] != state.rank:
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
        with contextlib.suppress(Exception):  # a failure here must not take the place of the report
            dist.destroy_process_group()  # the ranks waiting for this one in a collective fail now
    return result


def leave() -> None:
    """Tell rank 0 that this rank leaves; rank 0 waits for the others, who may still read the record from its store."""
    if state.rank != 0:
        _store_call(lambda store: store.add(LEFT, 1))
        return
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if state.children:  # the ranks this process started: wait for them to end
            if all(proc.poll() is not None for proc in state.children):
                return
        else:
            left = _store_call(lambda store: store.add(LEFT, 0))
            if left is None or left >= state.world - 1:
                return
        time.sleep(0.05)
