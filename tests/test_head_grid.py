"""Head grids (probes/grid.py): several heads on one frozen forward pass, the best on val kept, cached features.

Longer than 300 lines: the head grid of both probes (names, choice of the best head, checkpoints, cached features), one short test each.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import train
from backbones import load_backbone
from ops.schedules import warmup_poly
from probes.depth import DepthProbe
from probes.grid import block_choice, clip_each_group, format_lr, lr_choices, make_grid, union_blocks
from probes.segmentation import SegmentationProbe
from tests.conftest import TINY
from tests.helpers import NUM_CLASSES, DictDataset, loaders, make_trainer, tiny_depth_run, tiny_run

SEG_GRID = {"lr": [1e-3, 1e-2], "block_choices": [1, [1, 3]]}
DEPTH_GRID = {"lr": [1e-3, 5e-3], "out_index_choices": [[0, 1, 2, 3], [2, 2, 3, 3]]}


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint: Path) -> nn.Module:
    return load_backbone("dinov2_vits14", checkpoint=tiny_checkpoint, **TINY)


def seg_probe(backbone: nn.Module, **kwargs) -> SegmentationProbe:
    args = {"num_classes": NUM_CLASSES, "crop_size": 28, "stride": 14, "warmup_steps": 2, "max_steps": 10}
    return SegmentationProbe(backbone, **{**args, **kwargs})


def depth_probe(backbone: nn.Module, **kwargs) -> DepthProbe:
    args = {"kind": "linear4", "eval_crop": None, "warmup_steps": 2, "max_steps": 10, "sigloss_warmup_steps": 1}
    return DepthProbe(backbone, **{**args, **kwargs})


def depth_loaders() -> tuple[DataLoader, DataLoader]:
    """Train 28x28 crops, eval 30x40 images; depth in (0.5, 4.5) m."""
    g = torch.Generator().manual_seed(0)

    def sample(i: int, h: int, w: int) -> dict:
        return {
            "image": torch.randn(3, h, w, generator=g),
            "depth": torch.rand(1, h, w, generator=g) * 4 + 0.5,
            "path": f"img_{i}.jpg",
        }

    train_set = DictDataset([sample(i, 28, 28) for i in range(4)])
    eval_set = DictDataset([sample(i, 30, 40) for i in range(2)])
    return DataLoader(train_set, batch_size=2), DataLoader(eval_set, batch_size=1)


def count_calls(backbone: nn.Module) -> mock._patch:
    return mock.patch.object(backbone, "get_intermediate_layers", wraps=backbone.get_intermediate_layers)


def make_best(probe: SegmentationProbe | DepthProbe, index: int) -> None:
    """Mark head `index` as the best of the last validation."""
    scores = torch.zeros(len(probe.grid)) if probe.monitor_mode == "max" else torch.ones(len(probe.grid))
    scores[index] = 1.0 if probe.monitor_mode == "max" else 0.0
    probe.grid_val[:, probe.grid_metric_names.index(probe.monitor.removeprefix("val/"))] = scores


def test_grid_names_blocks_and_bad_choices() -> None:
    choices = [block_choice(4, 12, "P"), block_choice([2, 5], 12, "P")]
    grid = make_grid(choices, lr_choices([1e-3, 2.5e-4], "P"), "P")
    assert [head.name for head in grid] == ["last4_lr1e-3", "last4_lr2.5e-4", "blocks2-5_lr1e-3", "blocks2-5_lr2.5e-4"]
    assert grid[0].blocks == (8, 9, 10, 11) and grid[2].blocks == (2, 5) and grid[1].lr == 2.5e-4
    assert union_blocks(grid) == [2, 5, 8, 9, 10, 11]
    assert [h.name for h in make_grid([("", (11,))], [5e-3], "P")] == ["lr5e-3"]
    assert (format_lr(0.01), format_lr(3e-4), format_lr(1.0)) == ("1e-2", "3e-4", "1e0")
    with pytest.raises(ValueError, match=r"P: blocks=13 is not a block choice for a backbone with 12 blocks\. Fix"):
        block_choice(13, 12, "P")
    with pytest.raises(ValueError, match=r"blocks=\[3, 12\] is not a block choice .* indices from 0 to 11"):
        block_choice([3, 12], 12, "P")
    with pytest.raises(ValueError, match=r"lr=\[\] is neither a positive number"):
        lr_choices([], "P")
    with pytest.raises(ValueError, match=r"last4_lr1e-3 more than once"):
        make_grid(choices[:1], [1e-3, 0.001], "P")


def test_probes_refuse_bad_grids(backbone: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"checkpoint=.*head\.pth is one released head, but the grid has 4 heads"):
        seg_probe(backbone, checkpoint=str(tmp_path / "head.pth"), **SEG_GRID)
    with pytest.raises(
        ValueError, match=r"out_index=\[0, 1\] does not fit a 'linear4' head on a backbone with 4 blocks: give 4 block"
    ):
        depth_probe(backbone, out_index_choices=[[0, 1]])


def test_clipping_is_per_head() -> None:
    first, second = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    first.grad, second.grad = torch.tensor([3.0, 4.0]), torch.tensor([30.0, 40.0])
    optimizer = torch.optim.AdamW([{"params": [first]}, {"params": [second]}])
    clip_each_group(optimizer, 1.0)
    torch.testing.assert_close(first.grad, torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(second.grad, torch.tensor([0.6, 0.8]))


def test_seg_grid_trains_every_head_on_one_backbone_pass_per_step(backbone: nn.Module, tmp_path: Path) -> None:
    train_loader, _, _ = loaders()
    probe = seg_probe(backbone, **SEG_GRID)
    assert [spec.name for spec in probe.grid] == [
        "last1_lr1e-3",
        "last1_lr1e-2",
        "blocks1-3_lr1e-3",
        "blocks1-3_lr1e-2",
    ]
    before = [head.conv_seg.weight.clone() for head in probe.heads]
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    with count_calls(backbone) as calls:
        trainer.fit(probe, train_loader)
    assert calls.call_count == 2
    assert all(call.kwargs["n"] == [1, 3] for call in calls.call_args_list)
    groups = trainer.optimizers[0].param_groups
    assert [group["lr"] for group in groups] == pytest.approx([spec.lr * warmup_poly(2, 2, 10) for spec in probe.grid])
    for group, head in zip(groups, probe.heads):
        assert {id(p) for p in group["params"]} == {id(p) for p in head.parameters()}
    assert all(not torch.equal(head.conv_seg.weight, weight) for head, weight in zip(probe.heads, before))
    per_head = [trainer.callback_metrics[f"train/loss/{spec.name}"] for spec in probe.grid]
    torch.testing.assert_close(trainer.callback_metrics["train/loss"], torch.stack(per_head).sum())


def test_seg_grid_evaluates_every_head_on_one_backbone_pass_per_window(backbone: nn.Module) -> None:
    probe = seg_probe(backbone, tta_scales=(1.0, 1.5), tta_flip=True, **SEG_GRID).eval()
    images = torch.randn(1, 3, 30, 40)
    with torch.no_grad(), count_calls(backbone) as calls:
        every_head = probe.segment_grid(images, (45, 60))
    grid_calls = calls.call_count
    for index in range(len(probe.grid)):
        make_best(probe, index)
        with torch.no_grad(), count_calls(backbone) as calls:
            torch.testing.assert_close(every_head[index], probe.segment(images, (45, 60)))
        assert calls.call_count == grid_calls


def test_seg_grid_keeps_the_best_head_on_val_and_tests_with_it(
    backbone: nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_loader, evaluation, _ = loaders()
    probe = seg_probe(backbone, results_dir=str(tmp_path), **SEG_GRID)
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(probe, train_loader)
    trainer = make_trainer(tmp_path)
    [val] = trainer.validate(probe, evaluation)
    names = [spec.name for spec in probe.grid]
    per_head = [val[f"val/mIoU/{name}"] for name in names]
    best = probe.grid[probe.best_head].name
    assert val["val/mIoU"] == max(per_head) == val[f"val/mIoU/{best}"]
    assert val["val/aAcc"] == val[f"val/aAcc/{best}"]
    rows = json.loads((tmp_path / "head_grid.json").read_text())
    assert [row["head"] for row in rows] == names and [row["head"] for row in rows if row["chosen"]] == [best]
    assert [row["val/mIoU"] for row in rows] == pytest.approx(per_head)
    assert (tmp_path / "head_grid.csv").read_text().splitlines()[0] == "head,blocks,lr,val/aAcc,val/mIoU,chosen"

    with caplog.at_level(logging.INFO):
        [test] = trainer.test(probe, evaluation)
    assert f"testing {best}, the best of 4 heads on val/mIoU" in caplog.text
    spec = probe.grid[probe.best_head]
    single = seg_probe(backbone, blocks=list(spec.blocks), lr=spec.lr)
    single.head.load_state_dict(probe.heads[probe.best_head].state_dict())
    assert trainer.test(single, evaluation) == [test]


def test_seg_grid_checkpoint_keeps_the_choice(backbone: nn.Module, tmp_path: Path) -> None:
    train_loader, evaluation, _ = loaders()
    probe = seg_probe(backbone, **SEG_GRID)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=1)
    trainer.fit(probe, train_loader, evaluation)
    make_best(probe, 2)
    path = tmp_path / "grid.ckpt"
    trainer.save_checkpoint(path)
    restored = SegmentationProbe.load_from_checkpoint(path, backbone=backbone, weights_only=True)
    assert restored.grid == probe.grid and restored.best_head == 2
    torch.testing.assert_close(restored.grid_val, probe.grid_val, equal_nan=True)
    for head, original in zip(restored.heads, probe.heads):
        assert all(torch.equal(v, original.state_dict()[k]) for k, v in head.state_dict().items())
    fresh = seg_probe(backbone, **SEG_GRID)
    make_trainer(tmp_path).test(fresh, evaluation, ckpt_path=path)
    assert fresh.best_head == 2


def test_one_element_grid_is_the_single_head_probe(backbone: nn.Module, tmp_path: Path) -> None:
    train_loader, evaluation, _ = loaders()
    probes = []
    for kwargs in ({}, {"lr": [1e-3], "block_choices": [1]}):
        torch.manual_seed(0)
        probe = seg_probe(backbone, **kwargs)
        make_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(probe, train_loader)
        probes.append(probe)
    single, grid = probes
    assert single.state_dict().keys() == grid.state_dict().keys() and not hasattr(grid, "grid_val")
    assert all(torch.equal(v, grid.state_dict()[k]) for k, v in single.state_dict().items())
    [val] = make_trainer(tmp_path).validate(grid, evaluation)
    assert set(val) == {"val/mIoU", "val/aAcc"}
    assert DepthProbe(backbone, lr=[5e-3]).state_dict().keys() == DepthProbe(backbone).state_dict().keys()


def cached_batches(backbone: nn.Module, loader: DataLoader, dtype: torch.dtype, class_tokens: bool) -> DataLoader:
    """The loader's batches with `tokens` (and `class_tokens`) of all blocks in `dtype` instead of `image`."""
    samples = []
    for batch in loader:
        with torch.no_grad():
            out = backbone.get_intermediate_layers(
                batch["image"],
                n=backbone.n_blocks,
                reshape=True,
                return_class_token=class_tokens,
                norm=not class_tokens,
            )
        for i in range(len(batch["image"])):
            sample = {key: value[i] for key, value in batch.items() if key != "image"}
            if class_tokens:
                sample["tokens"] = {block: patch[i].to(dtype) for block, (patch, _) in enumerate(out)}
                sample["class_tokens"] = {block: cls[i].to(dtype) for block, (_, cls) in enumerate(out)}
            else:
                sample["tokens"] = {block: patch[i].to(dtype) for block, patch in enumerate(out)}
            samples.append(sample)
    return DataLoader(DictDataset(samples), batch_size=loader.batch_size)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_cached_features_train_as_images_do(backbone: nn.Module, tmp_path: Path, task: str) -> None:
    if task == "segmentation":
        train_loader, make = loaders()[0], lambda: seg_probe(backbone, **SEG_GRID)
    else:
        train_loader, make = depth_loaders()[0], lambda: depth_probe(backbone, **DEPTH_GRID)
    cached = cached_batches(backbone, train_loader, torch.float32, class_tokens=task == "depth")
    losses, heads = [], []
    for loader in (train_loader, cached):
        torch.manual_seed(0)
        probe = make()
        trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
        with count_calls(backbone) as calls:
            trainer.fit(probe, loader)
        assert calls.call_count == (loader is train_loader)
        losses.append(trainer.callback_metrics["train/loss"])
        heads.append(probe.grid_heads)
    torch.testing.assert_close(losses[0], losses[1])
    for image_head, cached_head in zip(*heads):
        torch.testing.assert_close(image_head.state_dict(), cached_head.state_dict())

    half = next(iter(cached_batches(backbone, train_loader, torch.float16, class_tokens=task == "depth")))
    probe = make()
    from_half, from_images = probe.features(half), probe.features(next(iter(train_loader)))
    assert from_half["tokens"].keys() == from_images["tokens"].keys()
    assert from_half["class_tokens"].keys() == from_images["class_tokens"].keys()
    for kind, by_block in from_half.items():
        for block, got in by_block.items():
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, from_images[kind][block], rtol=1e-2, atol=1e-2)


def test_cache_without_a_needed_block_says_how_to_fix(backbone: nn.Module) -> None:
    maps = torch.zeros(2, TINY["embed_dim"], 2, 2)
    with pytest.raises(
        ValueError,
        match=r"the head reads block 1\. Fix: rebuild the feature cache for this head \(blocks \[1, 3\], final norm",
    ):
        seg_probe(backbone, **SEG_GRID).features({"tokens": {3: maps}, "label": torch.zeros(2, 28, 28)})
    cls = torch.zeros(2, TINY["embed_dim"])
    batch = {"tokens": {i: maps for i in range(4)}, "class_tokens": {3: cls}}
    with pytest.raises(
        ValueError,
        match=r"reads block 0\. Fix: rebuild the feature cache for this head \(blocks \[0, 1, 2, 3\], no final norm, with class",
    ):
        depth_probe(backbone, **DEPTH_GRID).features(batch)


def test_depth_grid_trains_on_one_pass_and_tests_the_best_head(backbone: nn.Module, tmp_path: Path) -> None:
    train_loader, evaluation = depth_loaders()
    probe = depth_probe(backbone, **DEPTH_GRID)
    assert [spec.name for spec in probe.grid] == [
        "blocks0-1-2-3_lr1e-3",
        "blocks0-1-2-3_lr5e-3",
        "blocks2-2-3-3_lr1e-3",
        "blocks2-2-3-3_lr5e-3",
    ]
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0, gradient_clip_val=35)
    with count_calls(backbone) as calls:
        trainer.fit(probe, train_loader)
    assert calls.call_count == 2
    factors = [group["lr"] / spec.lr for group, spec in zip(trainer.optimizers[0].param_groups, probe.grid)]
    assert factors == pytest.approx([factors[0]] * len(probe.grid))

    trainer = make_trainer(tmp_path)
    with count_calls(backbone) as calls:
        [val] = trainer.validate(probe, evaluation)
    assert calls.call_count == 2 * len(evaluation)  # the image and its mirror, for all heads
    per_head = [val[f"val/RMSE/{spec.name}"] for spec in probe.grid]
    assert val["val/RMSE"] == min(per_head) == per_head[probe.best_head]

    [test] = trainer.test(probe, evaluation)
    spec = probe.grid[probe.best_head]
    single = depth_probe(backbone, out_index=list(spec.blocks), lr=spec.lr)
    single.model.head.load_state_dict(probe.model.heads[probe.best_head].state_dict())
    assert trainer.test(single, evaluation) == [test]


def test_grid_configs_run_end_to_end(tmp_path: Path, tiny_checkpoint: Path) -> None:
    short = ["trainer.max_steps=2", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"]
    seg = tiny_run(
        tmp_path / "seg",
        tiny_checkpoint,
        "head=linear_seg_grid",
        "head.lr=[1e-3,1e-2]",
        "head.block_choices=[1,4]",
        *short,
    )
    metrics = train.run(seg)
    names = ["last1_lr1e-3", "last1_lr1e-2", "last4_lr1e-3", "last4_lr1e-2"]
    assert {f"val/mIoU/{name}" for name in names} <= set(metrics) and 0 <= metrics["test/mIoU"] <= 1
    run_dir = Path(seg.paths.output_dir)
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    grid_val = torch.load(best, weights_only=False)["state_dict"]["grid_val"]
    rows = json.loads((run_dir / "head_grid.json").read_text())
    assert [row["val/mIoU"] for row in rows] == pytest.approx(grid_val[:, 1].tolist())

    depth = tiny_depth_run(
        tmp_path / "depth", tiny_checkpoint, "head=depth_linear4_grid", "head.lr=[1e-3,1e-2]", *short
    )
    metrics = train.run(depth)
    assert {"val/RMSE/lr1e-3", "val/RMSE/lr1e-2"} <= set(metrics) and metrics["test/RMSE"] > 0
    assert len(json.loads((Path(depth.paths.output_dir) / "head_grid.json").read_text())) == 2
