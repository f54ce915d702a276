"""Head grids: several heads (block choices x learning rates) trained side by side on one frozen forward pass.

As DINOv2's linear classification evaluation does: every head reads the features of one backbone pass, has its
own AdamW param group and learning rate under the shared schedule, the training loss is the sum of the heads'
losses, and the head with the best validation metric is the one tested and used for prediction. A grid of one
head is the plain probe: same parameter names, metric names and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MetricCollection

from heads.finite import is_finite, loss_error, nonfinite_gradients, nonfinite_inputs
from heads.results import write_rows
from utils.errors import UserError, option


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


def block_choice(choice: int | Sequence[int], n_blocks: int, owner: str) -> tuple[str, tuple[int, ...]]:
    """A block choice -> (name part, absolute block indices): an int n is the last n blocks ("last4"), a list
    holds block indices ("blocks2-5-8-11").

    Raises:
        ValueError: n outside 1..n_blocks, an empty list or an index outside 0..n_blocks-1; names the value and the fix.
    """
    fix = f"Fix: give the last n blocks as an int in 1..{n_blocks}, or a list of block indices in 0..{n_blocks - 1}."
    if isinstance(choice, int) and not isinstance(choice, bool):
        if not 1 <= choice <= n_blocks:
            raise ValueError(
                f"{owner}: blocks {choice} asks for the last {choice} blocks of a backbone with {n_blocks}. {fix}"
            )
        return f"last{choice}", tuple(range(n_blocks - choice, n_blocks))
    indices = list(choice) if isinstance(choice, Sequence) and not isinstance(choice, str) else []
    if not indices or not all(isinstance(i, int) and 0 <= i < n_blocks for i in indices):
        raise ValueError(f"{owner}: block choice {choice!r} is not valid for a backbone with {n_blocks} blocks. {fix}")
    return "blocks" + "-".join(map(str, indices)), tuple(indices)


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


def cached_features(
    batch: Mapping[str, Any], grid: Sequence[GridHead], class_tokens: bool, owner: str
) -> dict[int, Tensor | tuple[Tensor, Tensor]]:
    """A batch's cached features as float32, by block: patch maps `(B, C, h, w)` from `batch["tokens"]`, paired
    with the class tokens `(B, C)` of `batch["class_tokens"]` when `class_tokens`.

    Raises:
        ValueError: the cache lacks a block (or its class token) that a head of `grid` reads; names it and the fix.
    """
    tokens = {int(index): maps for index, maps in batch["tokens"].items()}
    classes = {int(index): cls for index, cls in batch.get("class_tokens", {}).items()} if class_tokens else {}
    for head in grid:
        missing = [i for i in head.blocks if i not in tokens or (class_tokens and i not in classes)]
        if missing:
            what = "patch maps and class tokens" if class_tokens else "patch maps"
            raise ValueError(
                f"{owner}: the cached features hold the {what} of blocks {sorted(tokens)}"
                f"{f' (class tokens: {sorted(classes)})' if class_tokens else ''}, but head {head.name} reads block "
                f"{missing[0]}. Fix: rebuild the feature cache with blocks {union_blocks(grid)}"
                f"{' and class tokens' if class_tokens else ''}, or train on images."
            )
    if class_tokens:
        return {i: (tokens[i].float(), classes[i].float()) for i in union_blocks(grid)}
    return {i: tokens[i].float() for i in union_blocks(grid)}


def shared_windows(
    logits_fn: Callable[[Tensor], Sequence[Tensor]], copies: int, batch: int
) -> Callable[[Tensor], Tensor]:
    """A slide-inference predict function for an image batch stacked once per head, `(copies * B, 3, H, W)`, that
    runs `logits_fn` (hence the backbone) once per group of windows for all heads.

    `heads.inference.slide_logits` hands its predict function the crops of a few windows concatenated, each crop
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


NONFINITE_CAUSES = {
    "images": "the input images are not finite (a corrupt image file or a transform that divides by zero)",
    "features": "the frozen backbone's features are not finite (weights holding NaN, or float16 overflow). "
    "Fix: check the backbone checkpoint, or train in float32",
    "cached features": "the feature cache holds NaN or inf tokens (written from a corrupt or diverged backbone, or "
    "its files are damaged). Fix: delete that cache's folder under feature_cache.root so that it is extracted again",
    "ground truth": "the training labels or depth maps hold NaN or inf. Fix: check the dataset's files",
}
"""Why each input of a training batch would not be finite, and the fix: the guard's message names the likely cause."""


class HeadGridModule(L.LightningModule):
    """What a probe with a head grid shares: per-head validation, the choice of the best head, per-head optimiser
    groups and gradient clipping, and the guard against non-finite losses and gradients.

    A non-finite training loss stops the run (`heads.finite.NonFiniteLossError`, naming the step and the input that
    was not finite) before its backward pass, and a non-finite gradient before the optimiser step, so no weight ever
    becomes NaN and no NaN checkpoint is saved. With the head option `skip_nonfinite: true` such a batch is skipped
    instead (no optimiser step) and counted in the logged `train/skipped_nonfinite`.

    Subclasses set `grid` (list of GridHead), `grid_heads` (the heads, in grid order), `monitor` ("val/<metric>")
    and `monitor_mode`, call `init_grid_metrics` once, and update `val_metrics[g]` with head g's predictions in
    `validation_step`. With more than one head, the buffer `grid_val` `(N, M)` (saved in checkpoints) holds every
    head's validation metrics of the last validation, and `best_head` is read from it.
    """

    grid: list[GridHead]
    monitor: str
    monitor_mode: str

    @property
    def grid_heads(self) -> list[nn.Module]:
        """The heads, in grid order (each subclass says where it keeps them)."""
        raise NotImplementedError

    def init_grid_metrics(self, metrics: MetricCollection) -> None:
        """One copy of `metrics` (unprefixed names) per head in `val_metrics`, and the `grid_val` buffer for a grid."""
        self.val_metrics = nn.ModuleList(metrics.clone() for _ in self.grid)
        self.grid_metric_names = sorted(metrics.keys())
        if len(self.grid) > 1:
            self.register_buffer("grid_val", torch.full((len(self.grid), len(self.grid_metric_names)), math.nan))

    @property
    def best_head(self) -> int:
        """The index of the head with the best monitored metric at the last validation (0 before any)."""
        if len(self.grid) == 1:
            return 0
        return best_index(self.grid_val[:, self.grid_metric_names.index(self._monitored)], self.monitor_mode)

    @property
    def _monitored(self) -> str:
        return self.monitor.removeprefix("val/")

    def head_key(self, key: str, index: int) -> str:
        """A per-head log key: `key` for a single head, `key/<head name>` in a grid."""
        return key if len(self.grid) == 1 else f"{key}/{self.grid[index].name}"

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimiser param group per head, with its learning rate."""
        return [{"params": head.parameters(), "lr": spec.lr} for head, spec in zip(self.grid_heads, self.grid)]

    def on_fit_start(self) -> None:
        # A skipped batch (training_step returning None) on one process of several would leave the others waiting
        # for its gradients: under DDP the guard stops the run instead, as it does by default.
        if self.hparams.get("skip_nonfinite", False) and self.trainer.world_size > 1:
            raise UserError(
                f"{option('head', 'skip_nonfinite', True)} works in a single process only; this run has "
                f"{self.trainer.world_size} ({option('trainer', 'devices', self.trainer.num_devices)}). Drop "
                f"{option('head', 'skip_nonfinite', True)} (non-finite batches then stop the run) or train on one device."
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The forward pass of a batch updates the heads' buffers (BatchNorm statistics) before its loss is known;
        # a non-finite batch is undone with this copy (a few vectors per head).
        self._buffers_before = [buffer.detach().clone() for head in self.grid_heads for buffer in head.buffers()]

    def finite_loss(self, loss: Tensor, batch_idx: int, inputs: Mapping[str, Any]) -> Tensor | None:
        """`loss` if it is finite; else stop (or, with `skip_nonfinite`, skip the batch: None) - see the class.

        `inputs` names the batch's tensors (keys of `NONFINITE_CAUSES`), to tell the likely cause.
        """
        if is_finite(loss):
            return loss
        self._nonfinite("loss", float(loss.detach()), batch_idx, inputs)
        return None

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # A finite loss can still have a non-finite gradient (e.g. sqrt at 0); it would make the weights NaN.
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if nonfinite_gradients(params):
            self._nonfinite("gradient", math.nan, None, {})
            for param in params:
                param.grad = None  # torch optimisers leave parameters without a gradient untouched

    def _nonfinite(self, what: str, value: float, batch_idx: int | None, inputs: Mapping[str, Any]) -> None:
        """Raise for a non-finite `what`, or with `skip_nonfinite` warn (the first time) and count it; either way the
        heads' buffers are put back as they were before the batch."""
        saved = getattr(self, "_buffers_before", None)
        if saved is not None:
            with torch.no_grad():
                for buffer, before in zip((b for head in self.grid_heads for b in head.buffers()), saved):
                    buffer.copy_(before)
        where = f"step {self.global_step}" + (
            f" (batch {batch_idx} of epoch {self.current_epoch})" if batch_idx is not None else ""
        )
        skip = bool(self.hparams.get("skip_nonfinite", False))
        if not skip:
            raise loss_error(what, value, where, inputs, NONFINITE_CAUSES, skip_option=True)
        self._skipped_nonfinite = getattr(self, "_skipped_nonfinite", 0) + 1
        if self._skipped_nonfinite == 1:
            bad = ", ".join(nonfinite_inputs(inputs)) or "none of its inputs"
            rank_zero_warn(
                f"Skipped a training batch at {where}: its {what} is {value} (non-finite inputs: {bad}). With "
                "skip_nonfinite such batches are skipped and counted in train/skipped_nonfinite."
            )
        self.log("train/skipped_nonfinite", float(self._skipped_nonfinite), on_step=True, on_epoch=False)

    def on_train_end(self) -> None:
        skipped = getattr(self, "_skipped_nonfinite", 0)
        if skipped:
            rank_zero_warn(f"Skipped {skipped} training batch(es) with a non-finite loss or gradient (skip_nonfinite).")

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        # Each head on its own: a norm over the whole grid would let one head's large gradients shrink the others' steps.
        if gradient_clip_val:
            clip_each_group(optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")

    def on_validation_epoch_end(self) -> None:
        results = []
        for metrics in self.val_metrics:
            results.append(metrics.compute())
            metrics.reset()
        values = torch.tensor([[float(result[name]) for name in self.grid_metric_names] for result in results])
        best = best_index(values[:, self.grid_metric_names.index(self._monitored)], self.monitor_mode)
        for index, result in enumerate(results):
            for name in self.grid_metric_names:
                if len(self.grid) > 1:
                    self.log(f"val/{name}/{self.grid[index].name}", result[name], sync_dist=True)
                if index == best:
                    self.log(f"val/{name}", result[name], sync_dist=True)
        if len(self.grid) > 1 and not self.trainer.sanity_checking:
            self.grid_val.copy_(values)
            self.write_grid_table()

    def on_test_epoch_start(self) -> None:
        if len(self.grid) == 1:
            return
        if self.grid_val.isnan().all():
            rank_zero_warn(f"The head grid was never validated: testing its first head, {self.grid[0].name}.")
            return
        chosen = self.grid[self.best_head]
        rank_zero_info(
            f"Head grid: testing {chosen.name}, the best of {len(self.grid)} heads on {self.monitor} "
            f"({self.monitor_mode}).\n{self.format_grid_table()}"
        )
        self.write_grid_table()

    def grid_rows(self) -> list[dict[str, Any]]:
        """One row per head: name, blocks, lr, its validation metrics, and whether it is the chosen one."""
        best = self.best_head
        return [
            {
                "head": spec.name,
                "blocks": "-".join(map(str, spec.blocks)),
                "lr": spec.lr,
                **{f"val/{name}": value for name, value in zip(self.grid_metric_names, self.grid_val[index].tolist())},
                "chosen": index == best,
            }
            for index, spec in enumerate(self.grid)
        ]

    def format_grid_table(self) -> str:
        """The grid's rows as a text table, the chosen head marked with `*`."""
        rows = self.grid_rows()
        width = max(len(row["head"]) for row in rows)
        header = f"  {'head':<{width}}  " + "  ".join(f"{f'val/{name}':>12}" for name in self.grid_metric_names)
        lines = [
            f"{'*' if row['chosen'] else ' '} {row['head']:<{width}}  "
            + "  ".join(f"{row[f'val/{name}']:>12.4f}" for name in self.grid_metric_names)
            for row in rows
        ]
        return "\n".join([header, *lines])

    def write_grid_table(self) -> None:
        """`<results_dir>/head_grid.csv` and `.json` (rank 0) when the probe has a `results_dir`."""
        results_dir = self.hparams.get("results_dir")
        if results_dir is not None and self.trainer.is_global_zero:
            write_rows(self.grid_rows(), Path(results_dir) / "head_grid")
