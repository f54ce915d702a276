"""Train and evaluate a head on a frozen backbone: `python train.py head=linear_seg data=ade20k`.

Data flows datamodules/ -> backbones/ -> heads/ -> metrics and logs. Hydra composes configs/train.yaml;
every object is built from its config's `_target_`, and a head's config names what it is built on
(`backbone: ${backbone}`), so this file knows no head in particular.
"""

from __future__ import annotations

import math
import sys
import warnings
from functools import partial
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from datamodules.feature_cache import find_backbone
from utils.atomic import write_text
from utils.errors import EXIT_USER_ERROR, exit_on_user_error, hydra_style
from utils.results import write_json

# The frozen backbone stays in eval mode on purpose; Lightning warns about every such module.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def build_trainer(cfg: DictConfig, monitor: str, mode: str) -> L.Trainer:
    """The Lightning trainer with the configured loggers and callbacks, plus best/last checkpointing on `monitor`."""
    checkpoint = ModelCheckpoint(
        dirpath=Path(cfg.paths.output_dir) / "checkpoints",
        filename="best-{step}",
        monitor=monitor,
        mode=mode,
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks = [checkpoint, *instantiate(cfg.get("callbacks") or {}).values()]
    loggers = list(instantiate(cfg.get("logger") or {}).values())
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column text table of metric names and values; `n/a` for a value that is not a finite number."""
    width = max(len(k) for k in metrics)
    rows = [
        f"{name:<{width}}  {value:.4f}" if math.isfinite(value) else f"{name:<{width}}  n/a"
        for name, value in sorted(metrics.items())
    ]
    rule = "-" * (width + 10)
    return "\n".join([rule, *rows, rule])


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit (unless `train=false`), test the best checkpoint, predict a folder if asked; return the metrics.

    With a `feature_cache` node, the head trains on cached tokens, extracted first if no cache has the run's key.
    """
    output_dir = Path(cfg.paths.output_dir)
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.head)
    if cfg.train and cfg.get("feature_cache"):
        # the extraction runs on the training run's devices, without its loggers and checkpoints
        extraction_trainer = partial(
            instantiate, cfg.trainer, logger=False, enable_checkpointing=False, use_distributed_sampler=False
        )
        datamodule = instantiate(cfg.feature_cache).prepare(datamodule, find_backbone(model), extraction_trainer)
    trainer = build_trainer(cfg, model.monitor, model.monitor_mode)
    checkpoint = trainer.checkpoint_callback

    metrics: dict[str, float] = {}
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    if cfg.test:
        best = "best" if cfg.train and checkpoint.best_model_path else None
        (results,) = trainer.test(model, datamodule=datamodule, ckpt_path=best)
        metrics.update({k: float(v) for k, v in results.items()})
    if cfg.data.get("predict_dir"):
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
        print(f"Predictions written to {cfg.head.predict_dir_out}")

    if metrics:
        # strict JSON: a metric that could not be computed is null, with the module's reason logged
        write_json(output_dir / "metrics.json", metrics, getattr(model, "metric_notes", None))
        print(format_metrics(metrics))
    print(f"Run directory: {output_dir}")
    return metrics


_composed = False


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    global _composed
    _composed = True
    exit_on_user_error(lambda: run(cfg), hydra_style)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as stop:
        # Hydra reports a bad override or config choice itself (one paragraph) and exits with 1; that is a
        # user error too, so it gets the exit code of every other one.
        sys.exit(EXIT_USER_ERROR if stop.code == 1 and not _composed else stop.code)
