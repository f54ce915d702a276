"""DINOv2's linear classification evaluation on features computed once (`head=linear_probe`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ops.linear_classifiers import (
    OFFICIAL_LEARNING_RATES,
    grid_accuracy,
    probe_grid,
    train_grid,
)
from probes.frozen_features import FrozenFeatureEvaluation


class LinearProbeEvaluation(FrozenFeatureEvaluation):
    """DINOv2's linear evaluation on features computed once (see ops.linear_classifiers).

    The grid trains on the train split minus a held-out fraction, which picks the best classifier; that one's val
    accuracy is the result. Needs the datamodule's splits [train, val] (parts 0 and 1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_blocks: Sequence[int] = (1, 4),
        avgpool: Sequence[bool] = (False, True),
        learning_rates: Sequence[float] = OFFICIAL_LEARNING_RATES,
        epochs: int = 10,
        batch_size: int = 128,
        held_out: float = 0.1,
        seed: int = 0,
        results_dir: str | None = None,
    ) -> None:
        super().__init__(backbone, n_last_blocks=max(n_blocks), results_dir=results_dir)
        self.grid = probe_grid(n_blocks, avgpool, learning_rates)
        self.epochs, self.batch_size, self.held_out, self.seed = epochs, batch_size, held_out, seed

    def evaluate(self) -> dict[str, float]:
        train, val = self.features(0), self.features(1)
        n_classes = len(self.trainer.datamodule.class_names)
        order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(self.seed))
        n_held = max(1, round(self.held_out * len(order)))
        held, fit = order[:n_held], order[n_held:]
        # The test loop runs under inference mode; training needs ordinary tensors and autograd.
        with torch.inference_mode(False), torch.enable_grad():
            tokens, means, labels = (
                t.clone().to(self.device) for t in (train.class_tokens, train.patch_means, train.labels)
            )
            heads = train_grid(
                self.grid, tokens[fit], means[fit], labels[fit], n_classes, self.epochs, self.batch_size, self.seed
            )
        held_acc = grid_accuracy(heads, self.grid, tokens[held], means[held], labels[held])
        val_acc = grid_accuracy(
            heads, self.grid, *(t.to(self.device) for t in (val.class_tokens, val.patch_means, val.labels))
        )
        best = int(np.argmax(held_acc))
        rows = [
            {
                "classifier": c.name,
                "n_blocks": c.n_blocks,
                "avgpool": c.avgpool,
                "lr": c.lr,
                "held_out_top1": round(100 * h, 2),
                "val_top1": round(100 * v, 2),
                "best": i == best,
            }
            for i, (c, h, v) in enumerate(zip(self.grid, held_acc, val_acc))
        ]
        print(f"Best on the held-out part of train: {self.grid[best].name}, val top-1 {100 * val_acc[best]:.2f} %")
        self.write(rows, "linear_probe")
        return {"test/linear_top1": val_acc[best], "test/linear_held_out_top1": held_acc[best]}
