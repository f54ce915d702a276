"""Head grids: several heads (block choices x learning rates) trained side by side on one frozen forward pass.

As DINOv2's linear classification evaluation does: every head reads the features of one backbone pass, has its
own AdamW param group and learning rate under the shared schedule, the training loss is the sum of the heads'
losses, and the head with the best validation metric is the one tested and used for prediction. A grid of one
head is the plain probe: same parameter names, metric names and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from backbones.features import parse_blocks


@dataclass(frozen=True)
class GridHead:
    """One head of a grid: its name (`last4_lr1e-3`), the backbone blocks it reads (absolute indices, in order), its lr."""

    name: str
    blocks: tuple[int, ...]
    lr: float


def to_plain(value: Any) -> Any:
    """OmegaConf lists, tuples, numpy arrays and scalars -> plain lists and numbers (checkpoints load with weights_only)."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [to_plain(item) for item in value]
    return value


def format_lr(lr: float) -> str:
    """A learning rate as a name part: 1e-3 -> "1e-3", 2.5e-4 -> "2.5e-4"."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def lr_choices(lr: float | Sequence[float], owner: str) -> list[float]:
    """`lr` as a grid axis: a number -> [number]; a non-empty list of positive numbers as it is."""
    values = lr if isinstance(lr, list) else [lr]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(
            f"{owner}: lr={lr!r} is neither a positive number nor a non-empty list of them. "
            "Fix: e.g. lr: 1.0e-3, or lr: [1.0e-4, 1.0e-3, 1.0e-2] for a grid of heads."
        )
    return [float(v) for v in values]


def block_choice(choice: object, n_blocks: int, owner: str) -> tuple[str, tuple[int, ...]]:
    """A block choice -> (name part, absolute block indices), read by `backbones.features.parse_blocks`: an int n
    is the last n blocks ("last4"), a list holds block indices ("blocks2-5-8-11")."""
    blocks = parse_blocks(choice, n_blocks, f"{owner}: blocks")
    if isinstance(choice, int):
        return f"last{choice}", blocks
    return "blocks" + "-".join(map(str, blocks)), blocks


def make_grid(block_choices: Sequence[tuple[str, Sequence[int]]], lrs: Sequence[float], owner: str) -> list[GridHead]:
    """Every (block choice, lr) pair, block choices outer; a choice's name part may be "" (then the name is `lr1e-3`).

    Raises:
        ValueError: the same head twice (a repeated lr or block choice).
    """
    grid = [
        GridHead("_".join(filter(None, (part, f"lr{format_lr(lr)}"))), tuple(blocks), float(lr))
        for part, blocks in block_choices
        for lr in lrs
    ]
    names = [head.name for head in grid]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"{owner}: the head grid has {', '.join(repeated)} more than once. Fix: list each lr and block choice once."
        )
    return grid


def union_blocks(grid: Sequence[GridHead]) -> list[int]:
    """The blocks any head of the grid reads, sorted: what one backbone pass must give."""
    return sorted({index for head in grid for index in head.blocks})


def shared_windows(
    logits_fn: Callable[[Tensor], Sequence[Tensor]], copies: int, batch: int
) -> Callable[[Tensor], Tensor]:
    """A slide-inference predict function for an image batch stacked once per head, `(copies * B, 3, H, W)`, that
    runs `logits_fn` (hence the backbone) once per group of windows for all heads.

    `ops.inference.slide_logits` hands its predict function the crops of a few windows concatenated, each crop
    holding the whole (stacked) batch: `(n * copies * B, 3, h, w)`. `logits_fn` gets the first copy's crops
    `(n * B, 3, h, w)` and returns one logits tensor `(n * B, K, h, w)` per head; head g's go where copy g's crops
    were. Stacking the heads on the batch dimension keeps every later step (overlap averaging, per-head softmax,
    TTA averaging) exactly that of a single head.
    """

    def predict(windows: Tensor) -> Tensor:
        crops = windows.unflatten(0, (-1, copies, batch))[:, 0].flatten(0, 1)
        logits = [out.unflatten(0, (-1, batch)) for out in logits_fn(crops)]
        return torch.stack(logits, dim=1).flatten(0, 2)

    return predict


def clip_each_group(optimizer: Optimizer, value: float, algorithm: str = "norm") -> None:
    """Clip the gradients of every param group (one per head) on its own, by norm or by value."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            torch.nn.utils.clip_grad_norm_(params, value)


def best_index(scores: Tensor, mode: str) -> int:
    """The best of `scores` `(N,)` ("max" or "min"), NaN counting as worst, the first on ties."""
    worst = -math.inf if mode == "max" else math.inf
    scores = scores.nan_to_num(nan=worst)
    return int(scores.argmax() if mode == "max" else scores.argmin())
