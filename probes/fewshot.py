"""N-way K-shot classification on frozen features: every method on the same episodes (`head=fewshot`)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from tqdm import tqdm

from ops.classifiers import (
    DEGENERATE_SPREAD,
    collapsed_features_warning,
    feature_spread,
    mean_confidence_interval,
)
from probes.frozen_features import FEATURE_KINDS, FrozenFeatureEvaluation, Method
from writers.tables import write_rows


class FewShotEvaluation(FrozenFeatureEvaluation):
    """N-way K-shot accuracy over the datamodule's episodes, every method on the same episodes.

    Args:
        methods: name -> method (see ops.classifiers: support, support labels, query, n_classes -> scores).
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

    def evaluate(self) -> dict[str, float]:
        datamodule = self.trainer.datamodule
        features = self.features(0).select(self.feature_kind)
        base_mean = self.features(1).select(self.feature_kind).mean(0) if self.n_parts() > 1 else None
        spread = feature_spread(features)
        if spread < DEGENERATE_SPREAD:
            rank_zero_warn(collapsed_features_warning(spread, datamodule.n_way))
        rows, metrics = [], {}
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
                metrics |= {key: mean, f"{key}_ci95": ci95}
        print("\n".join(format_fewshot_row(row) for row in rows))
        if any(row["constant_episodes"] for row in rows):
            rank_zero_warn(
                "(*) In those episodes the method predicted one class for every query, so their accuracy is exactly "
                f"chance, 1/n_way{'' if spread < DEGENERATE_SPREAD else ': the features barely differ between images'}."
            )
        self.write(rows, "fewshot")
        return metrics

    def on_predict_epoch_end(self) -> None:
        self.on_rank_zero(self.write_predictions)

    def write_predictions(self) -> None:
        """Classify the query images with `predict_method`; writes image, prediction, its score and every class's
        score (rank 0, with every process's images)."""
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
