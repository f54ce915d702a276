"""DINOv2's linear evaluation over features computed once: a grid of linear classifiers trained together.

As the official `dinov2/eval/linear.py`: the input is the class tokens of the last n blocks, optionally with the
average-pooled patch tokens of the last block; every (n blocks, avgpool, learning rate) gets its own nn.Linear
(weights N(0, 0.01), bias 0), all trained by SGD (momentum 0.9, no weight decay, lr scaled by batch / 256) under
one cosine schedule, the sum of their cross-entropies as the loss. Unlike the official run the features are
computed once (no training augmentation), so the grid trains in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ops.finite import check_loss

LINEAR_CAUSES = {
    "features": "the backbone's features are not finite. Fix: check the backbone checkpoint",
    "diverged": "lower head.learning_rates",
}
"""The likely causes of a non-finite linear-probe loss, for `ops.finite.check_loss`."""

OFFICIAL_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


@dataclass(frozen=True)
class ProbeConfig:
    """One classifier of the grid: its input (last n blocks' class tokens, + average-pooled patches) and base lr."""

    n_blocks: int
    avgpool: bool
    lr: float

    @property
    def name(self) -> str:
        return f"blocks{self.n_blocks}_avgpool{self.avgpool}_lr{self.lr:g}"


def linear_input(class_tokens: Tensor, patch_means: Tensor, n_blocks: int, avgpool: bool) -> Tensor:
    """Class tokens `(N, B, C)` of the last B blocks and the last block's mean patch token `(N, C)` -> `(N, n*C [+ C])`."""
    parts = [class_tokens[:, -n_blocks:].flatten(1)] + ([patch_means] if avgpool else [])
    return torch.cat(parts, dim=1)


def probe_grid(n_blocks: Sequence[int], avgpool: Sequence[bool], learning_rates: Sequence[float]) -> list[ProbeConfig]:
    """Every combination of the three options."""
    return [ProbeConfig(n, a, lr) for n in n_blocks for a in avgpool for lr in learning_rates]


def train_grid(
    configs: list[ProbeConfig],
    class_tokens: Tensor,
    patch_means: Tensor,
    labels: Tensor,
    n_classes: int,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
) -> nn.ModuleList:
    """One trained nn.Linear per config, in order. Features `(N, B, C)` and `(N, C)`, labels `(N,)`, on any device."""
    torch.manual_seed(seed)
    dim = class_tokens.shape[-1]
    heads = nn.ModuleList(nn.Linear(dim * (c.n_blocks + c.avgpool), n_classes) for c in configs).to(class_tokens.device)
    for head in heads:
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    groups = [{"params": head.parameters(), "lr": c.lr * batch_size / 256} for head, c in zip(heads, configs)]
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = -(-len(labels) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch, eta_min=0)
    for epoch in tqdm(range(epochs), desc="linear probe grid", unit="epoch"):
        for batch in torch.randperm(len(labels), device=labels.device).split(batch_size):
            loss = sum(
                F.cross_entropy(
                    head(linear_input(class_tokens[batch], patch_means[batch], c.n_blocks, c.avgpool)), labels[batch]
                )
                for head, c in zip(heads, configs)
            )
            check_loss(loss, f"linear-probe epoch {epoch}", {"features": (class_tokens, patch_means)}, LINEAR_CAUSES)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return heads


@torch.no_grad()
def grid_accuracy(
    heads: nn.ModuleList, configs: list[ProbeConfig], class_tokens: Tensor, patch_means: Tensor, labels: Tensor
) -> list[float]:
    """Top-1 accuracy of each trained classifier on features `(N, B, C)`, `(N, C)` with labels `(N,)`."""
    return [
        (head(linear_input(class_tokens, patch_means, c.n_blocks, c.avgpool)).argmax(1) == labels).float().mean().item()
        for head, c in zip(heads, configs)
    ]
