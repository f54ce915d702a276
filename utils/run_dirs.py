"""Run directories: unique for every run, and the same one again for a resumed run.

configs/train.yaml names them with two OmegaConf resolvers that train.py registers before Hydra starts:

- ``${unique_name:}``: the start time to the microsecond and the process id (``2026-12-02_13-10-05.123456-4242``),
  so two runs started in the same second (Hydra's ``${now:}`` has one-second resolution) never share a folder.
- ``${run_dir:${ckpt_path},RUNS}``: the run directory holding the checkpoint ``ckpt_path`` when it lies in one
  (``RUN/checkpoints/*.ckpt`` next to ``RUN/.hydra``), so that a resumed run continues there with its best-model
  tracking and logs; otherwise a new ``RUNS/${unique_name:}``.

Both are cached (``use_cache``), so every job of a multirun, which Hydra composes from the first one's cache, sees
the same sweep folder. `ResolveSweepDir` lets the sweep folder use ``${hydra:...}`` (through ``paths.log_dir``).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from utils.errors import UserError, exit_on_user_error, hydra_style, option


def unique_name() -> str:
    """This run's folder name: start time to the microsecond, then the process id."""
    return f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S.%f')}-{os.getpid()}"


def checkpoint_run_dir(ckpt_path: str | os.PathLike | None) -> Path | None:
    """The train.py run directory that holds checkpoint ``ckpt_path``, if it lies in one."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).expanduser().absolute()
    run = path.parent.parent
    if path.is_file() and path.parent.name == "checkpoints" and (run / ".hydra").is_dir():
        return run
    return None


def run_dir(ckpt_path: str | None, runs: str) -> str:
    """``ckpt_path``'s run directory when resuming from one, else a new unique folder under ``runs``."""
    found = checkpoint_run_dir(ckpt_path)
    return str(found) if found is not None else str(Path(runs) / unique_name())


def register_resolvers() -> None:
    """Make ``${unique_name:}`` and ``${run_dir:...}`` available to configs (idempotent)."""
    OmegaConf.register_new_resolver("unique_name", unique_name, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True, replace=True)


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot be created and written to (a file in its way, a read-only parent), or None."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


class ResolveSweepDir(Callback):
    """A Hydra callback: makes ``${hydra:...}`` resolvable where a multirun resolves its sweep folder, and checks
    that the run (or sweep) folder can be made before Hydra makes it.

    Hydra's launcher resolves ``hydra.sweep.dir`` before any job has set the Hydra config that ``${hydra:...}``
    reads, so the sweep folder, which goes through ``paths.log_dir`` (``${hydra:runtime.cwd}/logs``) and
    ``task_name``, could not be resolved and every multirun stopped there. Hydra would report a folder it cannot
    make (a file in the way, no write permission) with a traceback.
    """

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        HydraConfig.instance().set_config(config)
        _check_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        HydraConfig.instance().set_config(config)
        _check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def _check_writable(folder: Path, key: str) -> None:
    """Exit 2 with one paragraph when ``folder`` cannot be made: Hydra would make it with a traceback (and its
    callbacks turn exceptions into warnings, so the error leaves as `exit_on_user_error`'s exit)."""

    def check() -> None:
        reason = unwritable_reason(folder.expanduser().absolute())
        if reason is not None:
            raise UserError(
                f"Cannot create the run folder {folder}: {reason}. Fix: set {option('paths', 'log_dir', 'PATH')} to a "
                f"folder you can write to (runs go under PATH/<task>/), or {key}=PATH for this run's own folder."
            )

    exit_on_user_error(check, hydra_style)
