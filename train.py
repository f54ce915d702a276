"""Train and evaluate a head on a frozen backbone: `python train.py head=linear_seg data=ade20k`.

Data flows datamodules/ -> backbones/ -> heads/ -> metrics and logs. Hydra composes configs/train.yaml;
every object is built from its config's `_target_`, and a head's config names what it is built on
(`backbone: ${backbone}`), so this file knows no head in particular.
"""

from __future__ import annotations

import math
import re
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from utils.atomic import remove_stale_temps, write_text
from utils.errors import EXIT_USER_ERROR, UserError, find_user_error, hydra_style, option
from utils.faults import exit_on_fault
from utils.quiet import silence_unactionable_noise
from utils.results import write_json
from utils.run_dirs import register_resolvers

if TYPE_CHECKING:
    import lightning as L

# torch, Lightning and the project's models are imported where they are used, so that `--help` and a bad override
# answer at once instead of after several seconds of imports.

RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: the frozen model has no pretrained weights; these numbers only show the pipeline runs"
)

register_resolvers()  # ${run_dir:...} and ${unique_name:} of configs/train.yaml's run directories


def build_trainer(cfg: DictConfig, monitor: str, mode: str) -> L.Trainer:
    """The Lightning trainer with the configured loggers and callbacks, plus checkpointing.

    ``best-{step}.ckpt`` on `monitor` and ``last.ckpt`` after each validation, ``last.ckpt`` also every
    ``last_every_n_steps`` steps; the random states in every checkpoint; checkpoints written atomically and read
    as data only (`utils.checkpoints`).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from utils.checkpoints import PeriodicLastCheckpoint, RandomStates, SafeCheckpointIO
    from utils.distributed import SyncBatchNormEverywhere
    from utils.graceful_stop import GracefulStop

    dirpath = Path(cfg.paths.output_dir) / "checkpoints"
    remove_stale_temps(dirpath)  # the temporary file of a save that a kill interrupted
    checkpoint = ModelCheckpoint(
        dirpath=dirpath,
        filename="best-{step}",
        monitor=monitor,
        mode=mode,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # last.ckpt is one file, which the periodic checkpoint also writes
    )
    callbacks = [checkpoint, RandomStates(), *instantiate(cfg.get("callbacks") or {}).values(), GracefulStop()]
    if cfg.get("last_every_n_steps"):
        callbacks.append(PeriodicLastCheckpoint(dirpath, cfg.last_every_n_steps))
    loggers = list(instantiate(cfg.get("logger") or {}).values())
    plugins = [SafeCheckpointIO(), *([SyncBatchNormEverywhere()] if cfg.trainer.get("sync_batchnorm") else [])]
    return build(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins)


def format_metrics(metrics: dict[str, float], random_weights: bool = False) -> str:
    """A two-column text table of metric names and values; `n/a` for a value that is not a finite number.

    With ``random_weights`` the table is headed by a line saying so, where a reader of the numbers will see it.
    """
    width = max(len(k) for k in metrics)
    rows = [
        f"{name:<{width}}  {value:.4f}" if math.isfinite(value) else f"{name:<{width}}  n/a"
        for name, value in sorted(metrics.items())
    ]
    rule = "-" * (width + 10)
    return "\n".join([*([RANDOM_WEIGHTS_NOTE] if random_weights else []), rule, *rows, rule])


def check_run_options(cfg: DictConfig) -> None:
    """UserError for run options that would otherwise fail deep inside Lightning or a schedule."""
    import torch

    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2**32:
        raise UserError(
            f"{option('', 'seed', cfg.seed)} is not a whole number from 0 to 2**32 - 1 (numpy's seeds); use e.g. seed=0."
        )
    if cfg.ckpt_path is not None and not cfg.train:
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} resumes training, but train=false. Drop train=false to resume; to evaluate a "
            "trained head, use head.checkpoint=PATH (a released head file) or test the run's best-*.ckpt by resuming."
        )
    trainer = cfg.trainer
    if cfg.train and not (isinstance(trainer.max_steps, int) and trainer.max_steps > 0):
        raise UserError(
            f"{option('trainer', 'max_steps', trainer.max_steps)}: training needs a positive number of steps (the "
            "learning-rate schedule decays to 0 at max_steps); e.g. trainer.max_steps=4000, or train=false to "
            "evaluate without training."
        )
    every = cfg.get("last_every_n_steps")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 0):
        raise UserError(
            f"{option('', 'last_every_n_steps', every)}: last.ckpt is written every N training steps (N >= 1; 0 or "
            "null: only at validations); e.g. last_every_n_steps=500."
        )
    interval = trainer.get("val_check_interval")
    if interval is not None and not (
        (isinstance(interval, int) and interval > 0) or (isinstance(interval, float) and 0 < interval <= 1)
    ):
        raise UserError(
            f"{option('trainer', 'val_check_interval', interval)}: validate every N steps (N >= 1) or every fraction "
            "of an epoch (0 < f <= 1); e.g. trainer.val_check_interval=4000."
        )
    if str(trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"{option('trainer', 'accelerator', trainer.accelerator)} asks for a CUDA GPU, but torch sees none "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Run on the CPU with trainer=cpu, or "
            "trainer=default, which uses a GPU only when there is one."
        )


def resolved_yaml(cfg: DictConfig) -> str:
    """The run's config with every interpolation resolved; UserError for one that points at nothing or at itself."""
    from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError

    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except InterpolationKeyError as err:
        # e.g. a depth head (`${data.min_depth}`) on a segmentation dataset: configs that do not go together
        missing = re.search(r"Interpolation key '([^']+)' not found", str(err))
        reads = f"{err.full_key} reads {missing.group(1)}" if missing else str(err)
        choices = ", ".join(f"{group}={cfg_choice}" for group, cfg_choice in _choices().items())
        raise UserError(
            f"{reads}, which the composed config ({choices}) does not have: these configs do not go together (a depth "
            "head needs a depth dataset, data=nyu or data=kitti; a segmentation head a segmentation dataset). Fix: "
            "choose matching configs; `python train.py --cfg job` shows what was composed."
        ) from None
    except InterpolationResolutionError as err:
        # e.g. data.batch_size='${data.batch_size}': OmegaConf says only "Recursive interpolation detected"
        from hydra.core.hydra_config import HydraConfig

        key, hydra = err.full_key, HydraConfig.get() if HydraConfig.initialized() else None
        written = OmegaConf.to_container(hydra.overrides.task) if hydra else []  # unresolved: as the user wrote them
        override = next((o for o in written if o.split("=", 1)[0].lstrip("+~") == key), None)
        recursive = str(err).startswith("Recursive interpolation")
        reason = "it refers to itself, directly or through other keys" if recursive else str(err).splitlines()[0]
        raise UserError(
            f"{key} cannot be resolved: {reason} ({f'the override `{override}`' if override else 'the config'}). Fix: "
            f"give {key} a value (`{key}=VALUE`) or an interpolation of another key (`{key}='${{other.key}}'`); "
            "`python train.py --cfg job` shows what was composed."
        ) from None


def _choices() -> dict[str, str]:
    """The run's config group choices that shape it (head, data, backbone), as the command line spells them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {group: choices[group] for group in ("head", "data", "backbone") if group in choices}


def build(node: DictConfig, **kwargs: object) -> object:
    """``instantiate(node)``; a value the built object refuses is reported as the user's to fix.

    Constructors validate their arguments with ValueError (Lightning: MisconfigurationException), which Hydra
    wraps in an InstantiationException naming the config key; the user gets the reason and the key to change.
    """
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        key = re.search(r"full_key: (\S+)", str(err))
        unknown = (
            re.search(r"unexpected keyword argument '(\w+)'", str(cause)) if isinstance(cause, TypeError) else None
        )
        if (missing := re.search(r"Error locating target '([\w.]+)'", str(err))) and key:
            # a user's own config written for an older layout (datamodules moved into task folders), or a typo
            group, target = key.group(1).split(".")[0], missing.group(1)
            raise UserError(
                f"{key.group(1)}._target_ is {target}, which cannot be imported. Fix: name a class that exists, as the "
                f"configs in configs/{group}/ do (datamodules are grouped by task: "
                f'datamodules.segmentation.ade20k.ADE20kDataModule); `python -c "import {target.rpartition(".")[0]}"` '
                "shows why it fails."
            ) from err
        if unknown and key:
            # an option the object does not take: Hydra's own hint for a key not in the config is `+key=value`
            owner, name = key.group(1), unknown.group(1)
            raise UserError(
                f"{owner}.{name} is not an option of {owner} ({node.get('_target_')}). Fix: drop {owner}.{name} "
                f"(set by a `+{owner}.{name}=...` override, or by an experiment or head config made for another "
                f"{owner} config), or choose a {owner} config that takes it; `python train.py --cfg job` shows what "
                "was composed."
            ) from err
        if find_user_error(err) is not None or not isinstance(cause, (ValueError, MisconfigurationException)):
            raise
        where = f" (config key `{key.group(1)}`)" if key else ""
        raise UserError(f"A configured value was refused{where}: {cause}") from err


def resume_hint(cfg: DictConfig) -> str:
    """How to go on after a stop or a lost process, in train.py's terms (the paragraph of `utils.faults`)."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not cfg.train:
        return "Run the same command again: an evaluation starts over."
    if last.is_file():
        return f"Resume with the same command and ckpt_path={last}."
    cache = " The feature cache keeps the shards it finished and goes on from them." if cfg.get("feature_cache") else ""
    return f"No last.ckpt yet: run the same command again (a lower last_every_n_steps saves more often).{cache}"


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit (unless `train=false`), test the best checkpoint, predict a folder if asked; return the metrics.

    With a `feature_cache` node, the head trains on cached tokens (the features its probe reads, `feature_spec`),
    extracted first if no cache has the run's key.
    """
    import lightning as L
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from utils.checkpoints import resume_checkpoint
    from utils.graceful_stop import GracefulStop

    config_yaml = resolved_yaml(cfg)  # first: a value that cannot be resolved fails wherever it is read
    check_run_options(cfg)
    output_dir = Path(cfg.paths.output_dir)
    resume = resume_checkpoint(cfg.ckpt_path) if cfg.train else None  # a bad file stops the run before it starts
    say = rank_zero_only(print)  # under DDP every process runs this: the run's files and lines are rank 0's, once
    rank_zero_only(write_text)(output_dir / "config.yaml", config_yaml)  # torchrun/srun: one shared run folder
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data)
    model = build(cfg.head)
    if cfg.train and cfg.get("feature_cache"):
        # the extraction runs on the training run's devices, without its loggers and checkpoints
        def extraction_trainer(callbacks: list, **options: Any) -> L.Trainer:
            return instantiate(
                cfg.trainer,
                logger=False,
                enable_checkpointing=False,
                use_distributed_sampler=False,
                callbacks=[*callbacks, GracefulStop()],
                **options,
            )

        datamodule = instantiate(cfg.feature_cache).prepare(datamodule, model, extraction_trainer)
    trainer = build_trainer(cfg, model.monitor, model.monitor_mode)
    checkpoint = trainer.checkpoint_callback

    metrics: dict[str, float] = {}
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    best = checkpoint.best_model_path if cfg.train and cfg.test and checkpoint.best_model_path else None
    if cfg.test:
        (results,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({k: float(v) for k, v in results.items()})
    if metrics:  # written before predicting: an unreadable image in predict_dir must not lose them
        random_weights = any(getattr(module, "random_weights", False) for module in model.modules())
        # strict JSON: a metric that could not be computed is null, with the module's reason logged
        record = {**({"random_weights": True, "note": RANDOM_WEIGHTS_NOTE} if random_weights else {}), **metrics}
        if rank_zero_only.rank == 0:
            write_json(output_dir / "metrics.json", record, getattr(model, "metric_notes", None))
        say(format_metrics(metrics, random_weights))
    if cfg.data.get("predict_dir"):
        # the tested weights, named: with no ckpt_path, Lightning under SLURM loads its newest requeue checkpoint
        trainer.predict(model, datamodule=datamodule, return_predictions=False, ckpt_path=best)
        say(f"Predictions written to {cfg.head.predict_dir_out}")
    say(f"Run directory: {output_dir}")
    return metrics


_composed = False


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    global _composed
    _composed = True
    silence_unactionable_noise()
    exit_on_fault(lambda: run(cfg), hydra_style, partial(resume_hint, cfg))


if __name__ == "__main__":
    try:
        main()
    except SystemExit as stop:
        # Hydra reports a bad override or config choice itself (one paragraph) and exits with 1; that is a
        # user error too, so it gets the exit code of every other one.
        sys.exit(EXIT_USER_ERROR if stop.code == 1 and not _composed else stop.code)
