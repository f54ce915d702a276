"""One extraction of a folder at a time, across separately launched jobs, with every rank of a job deciding alike.

A job's global rank 0 holds the folder's lock for all its ranks and decides what they extract; the other ranks
learn it by broadcast, never from their own look at the disk. Two things go wrong otherwise when several jobs share
the folder (two training runs, two nodes' jobs, a run resubmitted while the first one still extracts): rank 0
waits for another job's lock while its other ranks, finding no finished cache yet, start extracting; and once the
lock is free, rank 0 finds the cache finished and skips the extraction its other ranks are waiting in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_info

T = TypeVar("T")

# How long global rank 0 waits for the lock between two broadcasts to its other ranks. A collective that waits longer
# than the process group's timeout (30 minutes by default) fails the job; another job's extraction can take hours.
POLL_SECONDS = 10.0


class ExtractionLock:
    """``<folder>.lock`` beside ``directory``, held by global rank 0 of the job that extracts into ``directory``.

    A second job waits, then finds the finished folder; other folders have other locks. It is `filelock`'s lock,
    ``flock`` on Unix: the OS releases it when its process dies, and on a file system that several nodes mount it
    holds across them where the file system shares ``flock`` between its clients (NFS, which Linux maps to its
    byte-range locks; Lustre mounted with ``-o flock``; GPFS; BeeGFS).
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.lock = FileLock(directory.with_name(directory.name + ".lock"))

    def acquire(self, strategy: Strategy) -> None:
        """Take the lock on global rank 0; every rank calls this (a collective) and returns once rank 0 holds it.

        Rank 0 tries for `POLL_SECONDS` at a time and broadcasts whether it holds the lock after every try, so no
        rank waits in one collective for long.
        """
        waiting = False
        while True:
            held = False
            if strategy.is_global_zero:
                self.directory.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.lock.acquire(timeout=POLL_SECONDS if waiting else 0)
                    held = True
                except Timeout:
                    if not waiting:
                        rank_zero_info(
                            f"Feature cache: another run is extracting into {self.directory}; waiting for it to finish."
                        )
                    waiting = True
            if strategy.broadcast(held, src=0):
                return

    def release(self) -> None:
        """Release the lock if this process holds it."""
        if self.lock.is_locked:
            self.lock.release()


def decided_by_rank_zero(strategy: Strategy, decide: Callable[[], T]) -> T:
    """``decide()`` run on global rank 0 only; its result, or its exception, on every rank.

    An exception stays on rank 0 alone otherwise, and the other ranks wait for its broadcast until the process
    group times out.
    """
    outcome: tuple[bool, Any] | None = None
    if strategy.is_global_zero:
        try:
            outcome = (True, decide())
        except Exception as err:  # noqa: BLE001 - raised again below, on every rank
            outcome = (False, err)
    done, value = strategy.broadcast(outcome, src=0)
    if done:
        return value
    raise value
