"""Helpers shared by several test files.

Composing configs/train.yaml as train.py would (`compose_train`), and shrinking the segmentation and depth
quickstarts to seconds on the tiny fixture backbone (`tiny_run`, `tiny_depth_run`); for the segmentation
probe, a stand-in backbone (`StubBackbone`), in-memory data (`DictDataset`, `random_label`, `loaders`) and a
quiet CPU trainer (`make_trainer`).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from backbones.features import FeatureSpec, parse_blocks
from datamodules.feature_cache import CachedFeatureDataModule, CacheKey, FeatureCache
from tests.conftest import TINY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose configs/train.yaml as `python train.py OVERRIDES` would, with the run directory at `output_dir`."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir / "run")
        del cfg.hydra
    return cfg


def tiny_run(tmp_path: Path, checkpoint: Path, *overrides: str, experiment: str = "quickstart") -> DictConfig:
    """The quickstart (or `experiment`, built on it) shrunk to seconds: 56 px crops, a few steps, the fixture backbone."""
    return compose_train(
        [
            f"experiment={experiment}",
            f"backbone.checkpoint={checkpoint}",
            "backbone.embed_dim=64",
            "backbone.depth=4",
            "backbone.num_heads=4",
            f"data.root={tmp_path / 'ade'}",
            "data.num_workers=0",
            "data.batch_size=2",
            "data.crop_size=56",
            "data.short_side=56",
            "head.stride=28",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            *overrides,
        ],
        tmp_path,
    )


def tiny_depth_run(tmp_path: Path, checkpoint: Path, *overrides: str, experiment: str = "depth_quickstart"):
    """The depth quickstart (or `experiment`, built on it) shrunk to seconds: 42x56 images, the 64-wide fixture
    backbone, 4 steps."""
    return compose_train(
        [
            f"experiment={experiment}",
            f"backbone.checkpoint={checkpoint}",
            *(f"backbone.{key}={value}" for key, value in TINY.items()),
            f"data.root={tmp_path / 'data'}",
            "data.generate_n_train=4",
            "data.generate_n_test=2",
            "data.generate_size=[42,56]",
            "data.crop_size=[28,42]",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            "head.warmup_steps=2",
            "head.sigloss_warmup_steps=1",
            *overrides,
        ],
        tmp_path,
    )


NUM_CLASSES = 4


class StubBackbone(nn.Module):
    """Stand-in for a frozen DINOv2: centre pads to a multiple of 14, strided conv, 1x1 conv "blocks"."""

    embed_dim = 8
    patch_size = 14
    num_register_tokens = 0
    n_blocks = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Conv2d(3, self.embed_dim, self.patch_size, stride=self.patch_size)
        self.blocks = nn.ModuleList(nn.Conv2d(self.embed_dim, self.embed_dim, 1) for _ in range(self.n_blocks))
        self.requires_grad_(False)

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | list[int] = 1,
        reshape: bool = True,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Tensor, ...] | tuple[tuple[Tensor, Tensor], ...]:
        """`(B, 3, H, W)` -> maps `(B, C, ceil(H/14), ceil(W/14))` of the chosen blocks, each paired with a "class
        token" (its mean, `(B, C)`) when `return_class_token`."""
        pad_h, pad_w = -x.shape[-2] % self.patch_size, -x.shape[-1] % self.patch_size
        x = self.patch_embed(F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))
        outputs = []
        for block in self.blocks:
            x = x + block(x)
            outputs.append(x)
        indices = range(self.n_blocks - n, self.n_blocks) if isinstance(n, int) else n
        if return_class_token:
            return tuple((outputs[i], outputs[i].mean((2, 3))) for i in indices)
        return tuple(outputs[i] for i in indices)


class DictDataset(Dataset):
    """In-memory samples (dicts), collated by the default collate."""

    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def random_label(height: int, width: int, generator: torch.Generator) -> Tensor:
    label = torch.randint(0, NUM_CLASSES, (height, width), generator=generator)
    label[0, :3] = 255
    return label


def loaders() -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train crops 28x28; eval images 30x40 with labels at an "original" 45x60."""
    g = torch.Generator().manual_seed(0)
    train = [{"image": torch.randn(3, 28, 28, generator=g), "label": random_label(28, 28, g)} for _ in range(4)]
    evaluation = [{"image": torch.randn(3, 30, 40, generator=g), "label": random_label(45, 60, g)} for _ in range(2)]
    predict = [
        {"image": torch.randn(3, 30, 40, generator=g), "size": (45, 60), "path": f"images/img_{i}.jpg"}
        for i in range(2)
    ]
    return (
        DataLoader(DictDataset(train), batch_size=2),
        DataLoader(DictDataset(evaluation), batch_size=1),
        DataLoader(DictDataset(predict), batch_size=1),
    )


def make_trainer(root: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        **kwargs,
    )


def extraction_trainer(**kwargs: object) -> L.Trainer:
    """The CPU trainer a feature-cache extraction runs on in tests: no logger, checkpoints or progress bar."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        **kwargs,
    )


class SpecProbe(nn.Module):
    """The least a feature cache asks of a probe: one frozen backbone and the `FeatureSpec` the head reads."""

    def __init__(self, backbone: nn.Module, blocks: int | list[int] = 1, norm: bool = True, class_tokens: bool = False):
        super().__init__()
        self.backbone = backbone
        self.feature_spec = FeatureSpec.of(parse_blocks(blocks, backbone.n_blocks), norm, class_tokens)


class CacheFor:
    """A `FeatureCache` and the features a head would read from it: `cache(...)` of the feature-cache tests."""

    def __init__(self, root: Path, blocks: int | list[int] = 1, norm: bool = True, class_tokens: bool = False, **kw):
        options = {"backbone": "dinov2_vits14", "samples_per_shard": 3, "batch_size": 2, "num_workers": 0}
        self.cache = FeatureCache(str(root), **(options | kw))
        self.read = {"blocks": blocks, "norm": norm, "class_tokens": class_tokens}

    def prepare(self, data: L.LightningDataModule, backbone: nn.Module, make_trainer) -> CachedFeatureDataModule:
        return self.cache.prepare(data, SpecProbe(backbone, **self.read), make_trainer)

    def key(self, backbone: nn.Module, source: Dataset, crop_size: object, numerics: dict | None = None) -> CacheKey:
        spec = SpecProbe(backbone, **self.read).feature_spec
        return self.cache.key(backbone, spec, source, crop_size, numerics)
