"""Silence what a user cannot act on: Lightning's advertising tips and warnings about our own design choices."""

from __future__ import annotations

import logging
import warnings


class _DropTips(logging.Filter):
    """Lightning's rank-zero log advertises its cloud products ("💡 Tip: ..."); nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as its category and message: the source line (often Hydra's instantiate) tells a user nothing."""
    return f"{category.__name__}: {message}\n"


def silence_unactionable_noise() -> None:
    """Install the filters; call once at start-up of a command line, before the trainer is built."""
    warnings.formatwarning = _format_warning
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    # Lightning prints through its own console handler; imported after Hydra set up the root logger, it would also
    # pass every line on to Hydra's handler, and each would be printed twice.
    logging.getLogger("lightning").propagate = False
    # The frozen backbone stays in eval mode on purpose; Lightning warns about every such module.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # A resumed run continues in its own run directory, whose checkpoints folder is not empty by design.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Under DDP every epoch-level test/ and val/ value is computed from synchronised metric states or from every
    # process's gathered results, so the processes log the same number; Lightning still advises
    # sync_dist=True for each key.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(test|val)/")
    # faiss logs at INFO which of its builds it loads, once per process: nothing to act on
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # Lightning 2.6's pytree helper uses a torch API that torch deprecated; the fix is Lightning's to make.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
