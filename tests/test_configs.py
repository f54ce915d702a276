"""Every config composes, and every `_target_` names something importable."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_object, instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from tests.helpers import CONFIGS, compose_train


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if not p.stem.startswith("_"))


def targets(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for v in node.values() for t in targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in targets(v)]
    return []


# Every head with the data it is meant for; each data option also appears with a head.
PAIRS = [
    ("linear_seg", "ade20k"),
    ("linear_seg", "voc2012"),
    ("linear_seg_ms", "cityscapes"),
    ("linear_seg_grid", "ade20k"),
    ("depth_linear", "nyu"),
    ("depth_linear4", "kitti"),
    ("depth_dpt", "nyu"),
    ("depth_linear4_grid", "nyu"),
    ("fewshot", "imagefolder"),
    ("knn", "imagefolder"),
    ("linear_probe", "imagefolder"),
    ("sam_box", "coco"),
    ("oneshot", "fss1000"),
    ("oneshot", "coco20i"),
    ("oneshot", "perseg"),
    ("oneshot", "oneshot_synthetic"),
    ("sam_points", "grabcut"),
    ("sam_points", "berkeley"),
    ("sam_points", "davis"),
    ("sam_edges", "bsds500"),
    ("retrieval", "roxford5k"),
    ("retrieval", "rparis6k"),
    ("retrieval", "revisited_synthetic"),
]


def assert_targets_import(node: object) -> None:
    for target in targets(OmegaConf.to_container(node, resolve=True)):
        assert get_object(target) is not None, target


@pytest.mark.parametrize("group", ["backbone", "head", "data", "trainer", "experiment"])
def test_every_option_composes(group: str, tmp_path: Path) -> None:
    """Each option composes; heads and data need their partner to resolve, so they resolve in PAIRS below."""
    for option in group_options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        if group not in ("head", "data"):
            assert_targets_import(cfg)


def test_pairs_cover_every_head_and_data_option() -> None:
    assert {head for head, _ in PAIRS} == set(group_options("head"))
    assert {data for _, data in PAIRS} == set(group_options("data"))


@pytest.mark.parametrize(("head", "data"), PAIRS)
def test_head_and_data_pairs_resolve(head: str, data: str, tmp_path: Path) -> None:
    assert_targets_import(compose_train([f"head={head}", f"data={data}"], tmp_path))


def test_backbone_overrides_reach_the_loader(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "backbone=dinov2_vitb14_reg",
            "backbone.checkpoint=/x.pth",
            "backbone.embed_dim=64",
            "backbone.depth=4",
            "backbone.num_heads=4",
        ],
        tmp_path,
    )
    assert cfg.backbone.name == "dinov2_vitb14_reg"
    assert (cfg.backbone.checkpoint, cfg.backbone.embed_dim, cfg.backbone.depth, cfg.backbone.num_heads) == (
        "/x.pth",
        64,
        4,
        4,
    )


def test_official_protocol_is_the_default(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    assert (cfg.head.lr, cfg.head.weight_decay, cfg.head.warmup_steps, cfg.head.max_steps) == (1e-3, 1e-4, 1500, 40000)
    assert (cfg.data.batch_size, cfg.data.crop_size, cfg.head.stride, cfg.head.blocks) == (16, 512, 341, 1)
    ms = compose_train(["head=linear_seg_ms"], tmp_path)
    assert ms.head.blocks == 4 and ms.head.tta_flip and list(ms.head.tta_scales) == [1.0, 1.32, 1.73, 2.28, 3.0]
    short = compose_train(["experiment=short_schedule"], tmp_path)
    assert short.head.max_steps == 4000


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="backbone.embeddim"):
        compose_train(["backbone.embeddim=64"], tmp_path)


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp"])
def test_multi_process_settings_need_no_plus(trainer: str, tmp_path: Path) -> None:
    """`strategy`, `devices`, `num_nodes` and `accelerator` are in every trainer config, and trainer=ddp builds a
    DDP trainer on the CPU too (its processes start only when it fits)."""
    overrides = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1", "trainer.strategy=ddp"]
    cfg = compose_train([f"trainer={trainer}", *overrides], tmp_path)
    trainer = instantiate(cfg.trainer, precision="32-true")
    assert trainer.world_size == 2 and isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.root_device.type == "cpu"  # Lightning's DDP then uses gloo
