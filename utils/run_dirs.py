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


class ResolveSweepDir(Callback):
    """A Hydra callback: makes ``${hydra:...}`` resolvable where a multirun resolves its sweep folder.

    Hydra's launcher resolves ``hydra.sweep.dir`` before any job has set the Hydra config that ``${hydra:...}``
    reads, so the sweep folder, which goes through ``paths.log_dir`` (``${hydra:runtime.cwd}/logs``) and
    ``task_name``, could not be resolved and every multirun stopped there.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        HydraConfig.instance().set_config(config)
