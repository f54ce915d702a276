"""Tests of heads/: the linear segmentation probe, its checkpoint loader, inference and training loop."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from heads import CheckpointError, LinearSegHead, load_official_head
from ops.inference import multiscale_flip_labels, multiscale_flip_probs, slide_logits, slide_windows
from ops.schedules import warmup_poly
from probes.segmentation import SegmentationProbe
from tests.helpers import NUM_CLASSES, StubBackbone, loaders, make_trainer


def make_probe(**kwargs) -> SegmentationProbe:
    args = {"num_classes": NUM_CLASSES, "crop_size": 28, "stride": 14, "warmup_steps": 2, "max_steps": 10}
    return SegmentationProbe(StubBackbone(), **{**args, **kwargs})


def random_head(in_channels: int, num_classes: int) -> LinearSegHead:
    """A head with every parameter and BN statistic randomised, in eval mode."""
    head = LinearSegHead(in_channels, num_classes)
    for tensor in head.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand_like(tensor) + 0.5)
    return head.eval()


def save_mmseg(head: nn.Module, path: Path, wrapped: bool = True) -> None:
    """Save `head` as the released heads are: mmseg `state_dict` with `decode_head.` keys."""
    state = {f"decode_head.{key}": value for key, value in head.state_dict().items()}
    torch.save({"meta": {"CLASSES": ["a", "b"], "iter": 40000}, "state_dict": state} if wrapped else state, path)


def test_head_shapes() -> None:
    head = LinearSegHead(16, 5, dropout=0.1)
    assert head([torch.randn(2, 16, 3, 7)]).shape == (2, 5, 3, 7)
    assert head([torch.randn(2, 8, 4, 6), torch.randn(2, 8, 4, 6)]).shape == (2, 5, 4, 6)


def test_resize_concat_of_four_blocks() -> None:
    head = LinearSegHead(4 * 2, 8).eval()
    nn.init.eye_(head.conv_seg.weight.view(8, 8))
    first = torch.randn(1, 2, 3, 4)
    constants = [torch.full((1, 2, 5 + i, 7), float(i)) for i in range(1, 4)]
    out = head([first, *constants]) * math.sqrt(1 + head.bn.eps)
    assert out.shape == (1, 8, 3, 4)
    torch.testing.assert_close(out[:, :2], first)
    for i in range(1, 4):
        torch.testing.assert_close(out[:, 2 * i : 2 * i + 2], torch.full((1, 2, 3, 4), float(i)))


@pytest.mark.parametrize("wrapped", [True, False])
def test_load_official_head_gives_identical_outputs(tmp_path: Path, wrapped: bool) -> None:
    trained = random_head(4 * 8, NUM_CLASSES)
    path = tmp_path / "dinov2_vits14_ade20k_ms_head.pth"
    save_mmseg(trained, path, wrapped)
    loaded = load_official_head(path, LinearSegHead(4 * 8, NUM_CLASSES)).eval()
    features = [torch.randn(2, 8, 5, 6) for _ in range(4)]
    torch.testing.assert_close(loaded(features), trained(features), rtol=0, atol=0)


def test_probe_loads_released_head(tmp_path: Path) -> None:
    trained = random_head(2 * StubBackbone.embed_dim, NUM_CLASSES)
    path = tmp_path / "head.pth"
    save_mmseg(trained, path)
    probe = make_probe(blocks=2, checkpoint=str(path)).eval()
    images = torch.randn(1, 3, 28, 42)
    torch.testing.assert_close(probe(images), trained(probe.extract(images)), rtol=0, atol=0)


def test_wrong_shapes_raise_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "dinov2_vitb14_ade20k_ms_head.pth"
    save_mmseg(LinearSegHead(4 * 768, 150), path)
    with pytest.raises(CheckpointError) as error:
        load_official_head(path, LinearSegHead(384, 150))
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert "dinov2_vitb14_ade20k_ms_head.pth" in message
    assert "bn.weight: file (3072,) vs model (384,)" in message
    assert "conv_seg.weight: file (150, 3072, 1, 1) vs model (150, 384, 1, 1)" in message
    assert "ViT-B (768) x 4 blocks" in message and "ViT-S (384) x 1 block" in message


def test_missing_keys_and_class_count_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "voc_head.pth"
    state = {f"decode_head.{k}": v for k, v in LinearSegHead(8, 21).state_dict().items() if k != "bn.running_var"}
    torch.save({"state_dict": state, "meta": {}}, path)
    with pytest.raises(CheckpointError, match=r"voc_head\.pth.*missing keys: bn.running_var.*num_classes=21"):
        load_official_head(path, LinearSegHead(8, 150))


def test_slide_windows_grid() -> None:
    assert slide_windows(10, 6, crop_size=4, stride=3) == [
        (0, 4, 0, 4),
        (0, 4, 2, 6),
        (3, 7, 0, 4),
        (3, 7, 2, 6),
        (6, 10, 0, 4),
        (6, 10, 2, 6),
    ]
    assert slide_windows(3, 5, crop_size=8, stride=6) == [(0, 3, 0, 5)]


def test_slide_equals_forward_when_image_is_smaller_than_crop() -> None:
    probe = make_probe().eval()
    image = torch.randn(2, 3, 20, 27)
    torch.testing.assert_close(
        slide_logits(probe.window_logits, image, NUM_CLASSES, 28, 14), probe.window_logits(image)
    )


def test_slide_normalises_overlaps() -> None:
    image = torch.randn(2, 3, 50, 71)
    constants = torch.arange(5.0).view(1, 5, 1, 1)
    calls = []

    def constant_fn(windows: Tensor) -> Tensor:
        calls.append(windows.shape[0])
        return constants.expand(windows.shape[0], -1, *windows.shape[-2:])

    torch.testing.assert_close(slide_logits(constant_fn, image, 5, 28, 14), constants.expand(2, -1, 50, 71))
    assert calls == [8, 8, 8, 6]  # 3 x 5 windows, 4 at a time, 2 images each
    torch.testing.assert_close(slide_logits(lambda w: w, image, 3, 28, 14), image)


def test_multiscale_flip_averages_probabilities() -> None:
    image = torch.randn(1, 3, 20, 30)
    single = multiscale_flip_probs(lambda w: w, image, 3, (40, 60), crop_size=16, stride=10)
    expected = F.interpolate(image, size=(40, 60), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(single, expected)
    scales = (1.0, 1.5)
    flipped = multiscale_flip_probs(lambda w: w, image, 3, (40, 60), scales, flip=True, crop_size=16, stride=10)
    torch.testing.assert_close(
        flipped, multiscale_flip_probs(lambda w: w, image, 3, (40, 60), scales, crop_size=16, stride=10)
    )
    torch.testing.assert_close(flipped.sum(1), torch.ones(1, 40, 60))


@pytest.mark.parametrize(("scales", "flip"), [((1.0,), False), ((1.0, 1.5), True)])
def test_labels_in_class_chunks_are_the_argmax_of_the_probabilities(scales: tuple, flip: bool) -> None:
    """A small `max_elements` makes `multiscale_flip_labels` take 2 classes at a time, as on a large photograph."""
    image = torch.randn(2, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(7, 3, 1, 1, generator=torch.Generator().manual_seed(1))

    def predict(windows: Tensor) -> Tensor:  # 7 classes, each a different mix of the channels
        return F.conv2d(windows, weights)

    options = {"scales": scales, "flip": flip, "crop_size": 16, "stride": 10}
    probs = multiscale_flip_probs(predict, image, 7, (50, 70), **options)
    whole = multiscale_flip_labels(predict, image, 7, (50, 70), **options)
    chunked = multiscale_flip_labels(predict, image, 7, (50, 70), max_elements=2 * 2 * 50 * 70, **options)
    assert torch.equal(whole, probs.argmax(1)) and whole.unique().numel() == 7
    top2 = probs.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-5  # no near-tie that float rounding could turn
    assert clear.float().mean() > 0.99 and torch.equal(chunked[clear], whole[clear])


def test_warmup_poly() -> None:
    assert warmup_poly(0, 1500, 40000) == pytest.approx(1e-6)
    assert warmup_poly(750, 1500, 40000) == pytest.approx(0.5 * (1 - 750 / 40000), rel=1e-5)
    assert warmup_poly(1500, 1500, 40000) == pytest.approx(1 - 1500 / 40000)
    assert warmup_poly(1500, 1500, 40000) > 0.96
    assert warmup_poly(20000, 1500, 40000, power=0.9) == pytest.approx(0.5**0.9)
    assert warmup_poly(40000, 1500, 40000) == 0.0
    assert warmup_poly(50000, 1500, 40000) == 0.0


def test_miou_against_hand_computed_confusion_matrix() -> None:
    probe = make_probe()
    # Two images; class 3 is in neither predictions nor labels; one pixel ignored.
    target = [np.array([[0, 0, 1], [1, 2, 255]]), np.array([[2, 2, 0], [1, 1, 1]])]
    pred = [np.array([[0, 1, 1], [1, 2, 0]]), np.array([[2, 0, 0], [1, 1, 2]])]
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for t, p in zip(target, pred):
        keep = t != 255
        np.add.at(confusion, (t[keep], p[keep]), 1)
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 4, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    iou = [2 / (3 + 3 - 2), 4 / (5 + 5 - 4), 2 / (3 + 3 - 2)]  # intersection / (label + pred - intersection)
    for t, p in zip(target, pred):
        probe.test_metrics.update(torch.from_numpy(p)[None], torch.from_numpy(t)[None])
        probe.test_class_iou.update(torch.from_numpy(p)[None], torch.from_numpy(t)[None])
    results = probe.test_metrics.compute()
    assert results["test/mIoU"].item() == pytest.approx(np.mean(iou))
    assert results["test/aAcc"].item() == pytest.approx(8 / 11)
    per_class = probe.test_class_iou.compute()
    torch.testing.assert_close(per_class[:3], torch.tensor(iou, dtype=torch.float32))
    assert per_class[3].isnan()


class PaletteData(L.LightningDataModule):
    """A predict loader with a palette, as the segmentation datamodules have."""

    def __init__(self, loader: DataLoader, palette: list[list[int]]) -> None:
        super().__init__()
        self.loader, self.palette = loader, np.asarray(palette, dtype=np.uint8)

    def predict_dataloader(self) -> DataLoader:
        return self.loader


def test_fit_validate_test_predict(tmp_path: Path) -> None:
    train, evaluation, predict = loaders()
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    probe = make_probe(blocks=[1, 3], tta_scales=(1.0, 1.5), tta_flip=True, predict_dir_out=str(tmp_path / "pred"))
    backbone_before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    head_before = probe.head.conv_seg.weight.clone()
    trainer = make_trainer(tmp_path, fast_dev_run=2)
    trainer.fit(probe, train, evaluation)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert not probe.backbone.training
    assert all(torch.equal(v, backbone_before[k]) for k, v in probe.backbone.state_dict().items())
    assert not torch.equal(probe.head.conv_seg.weight, head_before)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * warmup_poly(2, 2, 10))
    [val] = trainer.validate(probe, evaluation)
    [test] = trainer.test(probe, evaluation)
    assert set(val) == {"val/mIoU", "val/aAcc"} and set(test) == {"test/mIoU", "test/aAcc"}
    assert probe.monitor in val and probe.monitor_mode == "max"
    assert all(0 <= value <= 1 for value in [*val.values(), *test.values()])
    assert probe.per_class_iou.shape == (NUM_CLASSES,)
    labels = trainer.predict(probe, datamodule=PaletteData(predict, palette))
    assert [label.shape for label in labels] == [(45, 60), (45, 60)] and labels[0].dtype == torch.uint8
    png = Image.open(tmp_path / "pred" / "img_0.png")
    assert png.mode == "P" and png.getpalette()[:12] == [value for colour in palette for value in colour]
    np.testing.assert_array_equal(np.asarray(png), labels[0].numpy())


def test_checkpoint_has_no_backbone_and_resumes(tmp_path: Path) -> None:
    train, evaluation, _ = loaders()
    # Hydra passes OmegaConf lists; the checkpoint must still load with torch.load(weights_only=True).
    probe = make_probe(blocks=ListConfig([2, 3]), tta_scales=ListConfig([1.0]))
    trainer = make_trainer(tmp_path / "first", max_steps=2, limit_val_batches=1)
    trainer.fit(probe, train, evaluation)
    path = tmp_path / "probe.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["state_dict"] and not any(key.startswith("backbone.") for key in saved["state_dict"])

    restored = SegmentationProbe.load_from_checkpoint(path, backbone=StubBackbone(), weights_only=True)
    assert all(torch.equal(v, probe.head.state_dict()[k]) for k, v in restored.head.state_dict().items())

    resumed = make_probe(blocks=[2, 3])
    trainer = make_trainer(tmp_path / "resumed", max_steps=3, limit_val_batches=1)
    trainer.fit(resumed, train, evaluation, ckpt_path=path)
    assert trainer.global_step == 3
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3


def test_probe_on_real_backbone(tiny_checkpoint: Path) -> None:
    from backbones import load_backbone

    backbone = load_backbone("dinov2_vits14", checkpoint=str(tiny_checkpoint), embed_dim=64, depth=4, num_heads=4)
    probe = SegmentationProbe(backbone, num_classes=NUM_CLASSES, blocks=4, crop_size=112, stride=70).eval()
    images = torch.randn(1, 3, 150, 200)
    assert [f.shape for f in probe.extract(images)] == [(1, 64, 11, 15)] * 4
    assert probe(images).shape == (1, NUM_CLASSES, 11, 15)
    assert probe.segment(images, (300, 400)).shape == (1, NUM_CLASSES, 300, 400)
