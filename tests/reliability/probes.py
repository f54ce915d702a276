"""Cases of issue 12 (one shape for every probe): configs that do not go together, block choices, mismatched caches."""

from __future__ import annotations

from pathlib import Path

from tests.reliability import TINY_CHECKPOINT, Case


def _bad_block_choice(tmp: Path) -> None:
    from backbones.features import parse_blocks

    parse_blocks([2, 12], 12, "head.blocks")


def _cache_of_other_features(tmp: Path) -> None:
    import lightning as L

    from backbones import load_backbone
    from backbones.features import FeatureSpec
    from datamodules.depth.nyu import NYUDataModule
    from probes.depth import DepthProbe
    from tests.conftest import TINY
    from tests.helpers import CacheFor, extraction_trainer

    backbone = load_backbone("dinov2_vits14", TINY_CHECKPOINT, **TINY)
    data = NYUDataModule(
        str(tmp / "nyu"), generate=True, generate_n_train=2, generate_n_test=1, generate_size=(40, 50),
        crop_size=(28, 42), batch_size=2, num_workers=0,
    )  # fmt: skip
    probe = DepthProbe(backbone, kind="linear4", max_steps=2, warmup_steps=1)
    cached = CacheFor(tmp / "cache").cache.prepare(data, probe, extraction_trainer)
    cached.feature_spec = FeatureSpec.of(probe.feature_spec.blocks, norm=True)  # a cache of normed tokens
    L.Trainer(max_steps=1, logger=False, enable_checkpointing=False).fit(probe, datamodule=cached)


CASES = [
    # A depth head on a segmentation dataset: an omegaconf InterpolationKeyError traceback when writing config.yaml.
    Case(
        "probe-depth-head-on-segmentation-data",
        "traceback",
        argv=("train.py", "head=depth_linear4", "data=ade20k", "backbone.random_fallback=true"),
        names=("head.min_depth reads data.min_depth", "data=ade20k", "data=nyu"),
        absent=("logs/*/runs/*/checkpoints/*.ckpt",),
    ),
    # A block index past the backbone's depth.
    Case("probe-block-choice-out-of-range", "clear", call=_bad_block_choice, names=("head.blocks=[2, 12]", "0 to 11")),
    # A cache holding normed tokens read by a head that wants them un-normed: trained on the wrong numbers before.
    Case(
        "probe-cache-of-other-features",
        "silent",
        call=_cache_of_other_features,
        names=("final norm", "DepthProbe reads", "no final norm"),
    ),
]
