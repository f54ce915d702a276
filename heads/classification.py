"""Evaluation-only LightningModules for classification on frozen features: few-shot episodes, k-NN, linear probe.

The test (and predict) loop embeds every image once, keeping its features in memory; the evaluation runs on them at
the epoch's end, so every episode and method reuses the same features. Batches come from
`datamodules.imagefolder.ImageFolderDataModule`: {"image": (B, 3, H, W), "label": (B,), "index": (B,), "part": (B,)}.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from tqdm import tqdm

from heads.fewshot import (
    DEGENERATE_SPREAD,
    collapsed_features_warning,
    cosine_topk,
    feature_spread,
    mean_confidence_interval,
    weighted_votes,
)
from heads.linear_probe import (
    OFFICIAL_LEARNING_RATES,
    grid_accuracy,
    probe_grid,
    train_grid,
)
from heads.results import write_rows
from utils.errors import UserError

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

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._collect(batch)

    def write(self, rows: list[dict[str, Any]], name: str) -> None:
        if self.results_dir is not None:
            write_rows(rows, self.results_dir / name)
            print(f"Results written to {self.results_dir / name}.csv and .json")


class FewShotEvaluation(FrozenFeatureEvaluation):
    """N-way K-shot accuracy over the datamodule's episodes, every method on the same episodes.

    Args:
        methods: name -> method (see heads.fewshot: support, support labels, query, n_classes -> scores).
            A method with a `mean` argument gets the base set's mean feature when the datamodule has a base set.
        features: "cls", "avgpool" or "cls+avgpool".
        predict_method: the method (a key of methods) that classifies predict-mode queries.
        predict_dir_out: where predict mode writes predictions.csv / .json.
    """

    def __init__(
        self,
        backbone: nn.Module,
        methods: dict[str, Method],
        features: str = "cls",
        predict_method: str = "centre_and_project",
        results_dir: str | None = None,
        predict_dir_out: str | None = None,
    ) -> None:
        super().__init__(backbone, n_last_blocks=1, results_dir=results_dir)
        if features not in FEATURE_KINDS:
            raise ValueError(f"head.features={features!r} is not one of {FEATURE_KINDS}.")
        if predict_method not in methods:
            raise ValueError(f"head.predict_method={predict_method!r} is not one of head.methods {sorted(methods)}.")
        self.methods, self.feature_kind, self.predict_method = dict(methods), features, predict_method
        self.predict_dir_out = None if predict_dir_out is None else Path(predict_dir_out)

    def bound_methods(self, base_mean: Tensor | None) -> dict[str, Method]:
        """The methods, those taking a `mean` given the base set's mean feature when there is one."""
        if base_mean is None:
            return self.methods
        return {
            name: partial(m, mean=base_mean) if "mean" in inspect.signature(m).parameters else m
            for name, m in self.methods.items()
        }

    def on_test_epoch_end(self) -> None:
        datamodule = self.trainer.datamodule
        features = self.features(0).select(self.feature_kind)
        base_mean = self.features(1).select(self.feature_kind).mean(0) if self.n_parts() > 1 else None
        spread = feature_spread(features)
        if spread < DEGENERATE_SPREAD:
            rank_zero_warn(collapsed_features_warning(spread, datamodule.n_way))
        rows = []
        for k_shot, episodes in datamodule.episodes().items():
            n_way = episodes[0].n_way
            if self.results_dir is not None:
                self.results_dir.mkdir(parents=True, exist_ok=True)
                datamodule.save_episodes(self.results_dir / f"episodes_{n_way}way_{k_shot}shot.json", episodes)
            constant: dict[str, int] = {}
            accuracies = evaluate_episodes(features, episodes, self.bound_methods(base_mean), constant)
            for method, accs in accuracies.items():
                mean, ci95 = mean_confidence_interval(accs)
                key = f"test/{method}/{n_way}way_{k_shot}shot"
                if math.isnan(ci95):
                    self.metric_notes[f"{key}_ci95"] = "a single episode has no confidence interval"
                rows.append(
                    {
                        "method": method,
                        "features": self.feature_kind,
                        "n_way": n_way,
                        "k_shot": k_shot,
                        "n_queries": episodes[0].query.shape[1],
                        "episodes": len(episodes),
                        "accuracy": round(100 * mean, 2),
                        "ci95": round(100 * ci95, 2),
                        "constant_episodes": constant[method],
                    }
                )
                self.log(key, mean)
                self.log(f"{key}_ci95", ci95)
        print("\n".join(format_fewshot_row(row) for row in rows))
        if any(row["constant_episodes"] for row in rows):
            rank_zero_warn(
                "(*) In those episodes the method predicted one class for every query, so their accuracy is exactly "
                f"chance, 1/n_way{'' if spread < DEGENERATE_SPREAD else ': the features barely differ between images'}."
            )
        self.write(rows, "fewshot")

    def on_predict_epoch_end(self) -> None:
        """Classify the query images with `predict_method`; writes image, prediction, its score and every class's score."""
        support, queries = self.features(0), self.features(1)
        names = self.trainer.datamodule.class_names
        method = self.methods[self.predict_method]
        scores = method(
            support.select(self.feature_kind), support.labels, queries.select(self.feature_kind), len(names)
        )
        paths = [str(p) for p, _ in self.trainer.datamodule.sets[1].samples]
        rows = [
            {
                "image": path,
                "prediction": names[int(s.argmax())],
                "score": round(float(s.max()), 6),
                **{f"score_{n}": round(float(v), 6) for n, v in zip(names, s)},
            }
            for path, s in zip(paths, scores)
        ]
        if self.predict_dir_out is not None:
            self.predict_dir_out.mkdir(parents=True, exist_ok=True)
            write_rows(rows, self.predict_dir_out / "predictions")


def format_fewshot_row(row: dict[str, Any]) -> str:
    """One result line: method, protocol, accuracy +- its 95% interval (n/a for one episode), constant predictions."""
    ci95 = "n/a" if math.isnan(row["ci95"]) else f"{row['ci95']:.2f}"
    line = f"{row['method']:>22}  {row['n_way']}-way {row['k_shot']}-shot  {row['accuracy']:6.2f} +- {ci95} %"
    if row["constant_episodes"]:
        line += f"  (*) one class predicted for every query in {row['constant_episodes']}/{row['episodes']} episodes"
    return line


def evaluate_episodes(
    features: Tensor, episodes: Sequence, methods: dict[str, Method], constant: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Per-episode query accuracy `(n_episodes,)` of each method; `features` `(N, D)` indexed by the episodes' indices.

    `constant`, when given, receives per method the number of episodes in which it predicted the same class for
    every query (whose accuracy is then exactly 1 / n_way, whatever the features).
    """
    accuracies: dict[str, list[float]] = {name: [] for name in methods}
    counts = dict.fromkeys(methods, 0)
    for episode in tqdm(episodes, desc=f"{episodes[0].n_way}-way {episodes[0].k_shot}-shot episodes"):
        n_way, k_shot, n_queries = episode.n_way, episode.k_shot, episode.query.shape[1]
        support, query = features[episode.support.ravel()], features[episode.query.ravel()]
        support_labels = torch.arange(n_way).repeat_interleave(k_shot)
        query_labels = torch.arange(n_way).repeat_interleave(n_queries)
        for name, method in methods.items():
            predictions = method(support, support_labels, query, n_way).argmax(1)
            accuracies[name].append((predictions == query_labels).float().mean().item())
            counts[name] += int((predictions == predictions[0]).all())
    if constant is not None:
        constant.update(counts)
    return {name: np.array(accs) for name, accs in accuracies.items()}


class KNNEvaluation(FrozenFeatureEvaluation):
    """DINOv2's weighted k-NN: val class tokens vote among their k most cosine-similar train class tokens.

    Each neighbour's vote is exp(similarity / temperature). Reports top-1 (and top-5 with 5+ classes) accuracy per k.
    Needs the datamodule's splits [train, val] (parts 0 and 1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        ks: Sequence[int] = (10, 20, 100, 200),
        temperature: float = 0.07,
        results_dir: str | None = None,
    ) -> None:
        super().__init__(backbone, n_last_blocks=1, results_dir=results_dir)
        self.ks, self.temperature = [int(k) for k in ks], temperature

    def on_test_epoch_end(self) -> None:
        train, val = self.features(0), self.features(1)
        n_classes = len(self.trainer.datamodule.class_names)
        bank, labels = train.select("cls"), train.labels
        similarities, indices = cosine_topk(bank, val.select("cls"), min(max(self.ks), len(bank)))
        rows = []
        for k in self.ks:
            k_used = min(k, len(bank))
            votes = weighted_votes(similarities[:, :k_used], labels[indices[:, :k_used]], n_classes, self.temperature)
            ranked = votes.topk(min(5, n_classes), dim=1).indices
            top1 = (ranked[:, 0] == val.labels).float().mean().item()
            top5 = (ranked == val.labels[:, None]).any(1).float().mean().item()
            rows.append(
                {
                    "k": k,
                    "k_used": k_used,
                    "temperature": self.temperature,
                    "top1": round(100 * top1, 2),
                    "top5": round(100 * top5, 2),
                }
            )
            self.log(f"test/knn_k{k}_top1", top1)
            self.log(f"test/knn_k{k}_top5", top5)
        self.write(rows, "knn")


class LinearProbeEvaluation(FrozenFeatureEvaluation):
    """DINOv2's linear evaluation on features computed once (see heads.linear_probe).

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

    def on_test_epoch_end(self) -> None:
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
        self.log("test/linear_top1", val_acc[best])
        self.log("test/linear_held_out_top1", held_acc[best])
        self.write(rows, "linear_probe")
