"""Evaluation-only LightningModules for classification on frozen features: few-shot episodes, k-NN, linear probe.

The test (and predict) loop embeds every image once, keeping its features in memory; the evaluation runs on them at
the epoch's end, so every episode and method reuses the same features. Under DDP each process embeds its share of the
images (every image once) and rank 0 gathers them all, evaluates once (tables written, lines printed) and sends the
metrics to the other ranks, which log the same numbers. Batches come from
`datamodules.classification.imagefolder.ImageFolderDataModule`: {"image": (B, 3, H, W), "label": (B,), "index": (B,), "part": (B,)}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from utils.distributed import from_rank_zero, gather_to_zero
from utils.errors import UserError
from writers.tables import write_rows

FEATURE_KINDS = ("cls", "avgpool", "cls+avgpool")
Method = Callable[..., Tensor]


@dataclass
class Features:
    """The frozen features of one image set, in dataset order.

    class_tokens: (N, B, C) normed class tokens of the last B blocks.
    patch_means: (N, C) the last block's normed patch tokens, averaged.
    labels: (N,) class ids (-1 = unlabelled).
    """

    class_tokens: Tensor
    patch_means: Tensor
    labels: Tensor

    def select(self, kind: str) -> Tensor:
        """`(N, D)`: the last class token ("cls"), the mean patch token ("avgpool") or both concatenated."""
        parts = {"cls": [self.class_tokens[:, -1]], "avgpool": [self.patch_means]}
        parts["cls+avgpool"] = parts["cls"] + parts["avgpool"]
        return torch.cat(parts[kind], dim=1)


class FrozenFeatureEvaluation(L.LightningModule):
    """Embeds every test / predict image once with the frozen backbone; subclasses evaluate at the epoch's end.

    Args:
        backbone: a frozen backbone with `get_intermediate_layers`.
        n_last_blocks: how many of the last blocks' class tokens to keep.
        results_dir: where result tables go (`<name>.csv` and `.json`); None writes none.
    """

    monitor = None
    """Nothing is trained, so no checkpoint metric."""
    monitor_mode = "max"

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 1, results_dir: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.n_last_blocks = n_last_blocks
        self.results_dir = None if results_dir is None else Path(results_dir)
        self.metric_notes: dict[str, str] = {}
        """Why a logged metric is NaN (train.py writes it as null with this reason), by metric name."""
        self._batches: list[dict[str, Tensor]] = []

    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images `(B, 3, H, W)` -> class tokens of the last blocks `(B, n_last_blocks, C)` and mean patch token `(B, C)`."""
        outputs = self.backbone.get_intermediate_layers(
            images, n=self.n_last_blocks, return_class_token=True, norm=True
        )
        return torch.stack([cls for _, cls in outputs], dim=1), outputs[-1][0].mean(1)

    def _collect(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        class_tokens, patch_means = self.embed(batch["image"])
        kept = {
            "class_tokens": class_tokens,
            "patch_means": patch_means,
            **{k: batch[k] for k in ("label", "index", "part")},
        }
        self._batches.append({k: v.cpu() for k, v in kept.items()})
        return self._batches[-1]

    def features(self, part: int) -> Features:
        """The collected features of image set `part`, in dataset order."""
        stacked = {k: torch.cat([b[k] for b in self._batches]) for k in self._batches[0]}
        rows = torch.nonzero(stacked["part"] == part).squeeze(1)
        rows = rows[stacked["index"][rows].argsort()]
        bad = ~(
            stacked["class_tokens"][rows].isfinite().flatten(1).all(1) & stacked["patch_means"][rows].isfinite().all(1)
        )
        if bad.any():
            # a NaN feature would make every method's scores NaN and its accuracy a silent, meaningless number
            raise UserError(
                f"The backbone gave NaN or inf features for {int(bad.sum())} of {len(rows)} images (image set "
                f"{part}): the backbone's weights hold NaN or inf, or a float16 forward overflowed. Fix: check the "
                "backbone checkpoint, or run in float32."
            )
        return Features(stacked["class_tokens"][rows], stacked["patch_means"][rows], stacked["label"][rows])

    def n_parts(self) -> int:
        return len(self.trainer.datamodule.sets)

    def on_test_epoch_start(self) -> None:
        self._batches = []

    def on_predict_epoch_start(self) -> None:
        self._batches = []

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        for name, value in self.on_rank_zero(self.evaluate).items():
            self.log(name, value)

    def evaluate(self) -> dict[str, float]:
        """The evaluation on every image's features (`features`), run on rank 0 only: writes its tables, prints its
        lines and returns the metrics to log, by name."""
        raise NotImplementedError

    def on_rank_zero(self, evaluate: Callable[[], Any]) -> Any:
        """`evaluate()` on rank 0 with the features of every process's images; its result on every rank."""
        everyone = gather_to_zero(self._batches)

        def with_every_image() -> Any:
            self._batches = [batch for batches in everyone for batch in batches]
            return evaluate()

        return from_rank_zero(with_every_image)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._collect(batch)

    def write(self, rows: list[dict[str, Any]], name: str) -> None:
        if self.results_dir is not None:
            write_rows(rows, self.results_dir / name)
            print(f"Results written to {self.results_dir / name}.csv and .json")
