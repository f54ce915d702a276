"""A LightningModule whose predict loop turns images into the tokens a head reads, for the feature cache."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from backbones.base import FrozenBackbone
from backbones.features import Features, FeatureSpec, read_features


class FeatureExtractor(L.LightningModule):
    """Frozen backbone -> float16 tokens on the CPU, ready to be written to disk by a prediction writer.

    ``predict_step``: a batch ``{"image": (B, 3, H, W), ...}`` -> the features of ``spec``
    (`backbones.features.read_features`) as float16 on the CPU:
    ``{"tokens": {block: (B, C, H/p, W/p)}, "class_tokens": {block: (B, C)}}``, ``class_tokens`` empty unless asked for.
    Under CUDA the backbone runs in its autocast dtype (bf16), as it does when a head trains on images; the
    trainer's precision plugin may add its own autocast (``bf16-mixed`` on the CPU): `token_numerics` says which.
    """

    def __init__(self, backbone: FrozenBackbone, spec: FeatureSpec):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.spec = spec
        # the ranks of a DDP extraction split the pending shards: with fewer shards than ranks, some have none
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Features:
        features = read_features(self.backbone, batch["image"], self.spec)
        return {kind: {block: t.half().cpu() for block, t in by_block.items()} for kind, by_block in features.items()}


def token_numerics(backbone: FrozenBackbone, device_type: str, precision: str) -> dict[str, str]:
    """Everything besides the weights and the input that rounds an extraction's tokens, for a feature cache key.

    ``device_type``: ``cpu``, ``cuda``, ...; ``precision``: the trainer's (``32-true``, ``bf16-mixed``...), whose
    autocast wraps ``predict_step``. Then the backbone's own autocast (bf16 on CUDA, `FrozenBackbone._autocast`),
    its weight dtype, and the float32 matmul / convolution modes (TF32 on CUDA changes the last bits).
    """
    numerics = {
        "device": device_type,
        "trainer_precision": precision,
        "autocast_dtype": str(backbone.autocast_dtype),
        "weight_dtype": str(backbone.weight_dtype),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device_type == "cuda":
        numerics["cudnn_allow_tf32"] = str(torch.backends.cudnn.allow_tf32)
    return numerics
