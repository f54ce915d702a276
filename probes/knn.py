"""DINOv2's weighted k-NN classification on frozen class tokens (`head=knn`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ops.classifiers import (
    cosine_topk,
    weighted_votes,
)
from probes.frozen_features import FrozenFeatureEvaluation


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

    def evaluate(self) -> dict[str, float]:
        train, val = self.features(0), self.features(1)
        n_classes = len(self.trainer.datamodule.class_names)
        bank, labels = train.select("cls"), train.labels
        similarities, indices = cosine_topk(bank, val.select("cls"), min(max(self.ks), len(bank)))
        rows, metrics = [], {}
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
            metrics |= {f"test/knn_k{k}_top1": top1, f"test/knn_k{k}_top5": top5}
        self.write(rows, "knn")
        return metrics
