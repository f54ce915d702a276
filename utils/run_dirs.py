"""Run directories: unique for every run, and the same one again for a resumed run.

configs/train.yaml names them with two OmegaConf resolvers that train.py registers before Hydra starts:

- ``${unique_name:}``: the start time to the microsecond and the process id (``2026-12-02_13-10-05.123456-4242``),
  so two runs started in the same second (Hydra's ``${now:}`` has one-second resolution) never share a folder.
- ``${run_dir:${ckpt_path},RUNS}``: the run directory holding the checkpoint ``ckpt_path`` when it lies in one
  (``RUN/checkpoints/*.ckpt`` next to ``RUN/.hydra``), so that a resumed run continues there with its best-model
  tracking and logs; otherwise a new ``RUNS/${unique_name:}``.
- The processes that torchrun or SLURM's srun start separately (one per GPU, on several nodes) must share one folder
  on a shared file system: ``${unique_name:}`` is then one name they all know (`launch_name`), and only rank 0
  writes ``.hydra/`` and ``train.log`` there (``${hydra_subdir:}``, ``${log_name:NAME}``); rank R logs to
  ``train_rank<R>.log``. Lightning's own launcher hands its processes the folder itself.

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
    """This run's folder name: start time to the microsecond, then the process id; or, for processes that a
    launcher started separately, the name they share (`launch_name`)."""
    return launch_name() or f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S.%f')}-{os.getpid()}"


def launch_rank() -> int | None:
    """This process's global rank when torchrun or srun started it as one of several processes, else None."""
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return None


def launch_name() -> str | None:
    """The run folder name that every process of one torchrun or srun launch knows: ``torchrun-<rdzv id>`` or
    ``slurm-<job id>`` (the same again after a requeue, where Lightning looks for its ``hpc_ckpt_<n>.ckpt``); None
    for a single process.

    torchrun's static rendezvous (``--master-addr``) has no id of its own (``none``): a UserError asks for one.
    """
    if launch_rank() is None:
        return None
    if "TORCHELASTIC_RUN_ID" in os.environ:
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        if run_id == "none":
            raise UserError(
                f"torchrun started {os.environ['WORLD_SIZE']} processes that must share one run folder, and nothing "
                "names it (torchrun's --rdzv-id is `none`). Fix: give every node's torchrun the same --rdzv-id NAME "
                "(a new NAME per run: the run goes to logs/<task>/runs/torchrun-NAME), or the same "
                "hydra.run.dir=PATH on the shared file system; to resume, ckpt_path=RUN/checkpoints/last.ckpt names "
                "the folder itself."
            )
        return f"torchrun-{run_id}"
    return f"slurm-{os.environ['SLURM_JOB_ID']}"


def hydra_subdir() -> str | None:
    """``hydra.output_subdir``: ``.hydra`` for rank 0 (or a single process), none for the other ranks of a launch."""
    return ".hydra" if not launch_rank() else None


def log_name(name: str) -> str:
    """The log file's name (without ``.log``): ``name`` for rank 0, ``name_rank<R>`` for rank R of a launch, so
    that every file on the shared folder has one writer."""
    rank = launch_rank()
    return f"{name}_rank{rank}" if rank else name


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
    """Make ``${unique_name:}``, ``${run_dir:...}``, ``${hydra_subdir:}`` and ``${log_name:...}`` available to configs
    (idempotent)."""
    OmegaConf.register_new_resolver("unique_name", unique_name, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("log_name", log_name, replace=True)


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
        run = exit_on_user_error(lambda: Path(config.hydra.run.dir), hydra_style)  # `launch_name` can refuse
        _check_writable(run, "hydra.run.dir")

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
