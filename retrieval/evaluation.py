"""The revisited Oxford / Paris evaluation as a Lightning test loop: `python train.py head=retrieval data=roxford5k`.

Nothing is trained. The test loop embeds every database image and every query (cropped to its box by the datamodule,
`datamodules.retrieval.revisited`) with `retrieval.embedding.embed`, ranks the whole database for each query by cosine
similarity (an exact FAISS inner-product index over the L2-normalised descriptors), and scores the rankings with the
revisited protocol (`metrics.retrieval.revisited_map`): mAP and mP@k in the Easy, Medium and Hard settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from metrics.retrieval import SETTINGS, revisited_map
from retrieval.embedding import EmbeddingSpec, embed
from retrieval.faiss_index import build_index, search
from utils.distributed import all_gather
from utils.errors import UserError
from utils.results import write_json

RESULTS_FILE = "retrieval_queries.json"


class RetrievalEvaluation(L.LightningModule):
    """Revisited-protocol mAP of a frozen backbone's global descriptors.

    Args:
        backbone: the frozen backbone (`backbones.load_backbone`).
        backbone_name: its name, recorded in the embedding spec (`${backbone.name}`).
        pooling: "cls", "gem" or "cls+gem" (see `retrieval.embedding`).
        block: the block whose tokens are pooled (-1: the last).
        gem_p: the GeM exponent.
        image_size: the longer side the datamodule resizes images to (`${data.image_size}`, recorded in the spec).
        kappas: the k of the mP@k metrics.
        top_k: how many database images per query `retrieval_queries.json` lists.
        results_dir: where `retrieval_queries.json` (per query: its AP in each setting and its top_k) goes; None: none.
    """

    monitor = None
    """Nothing is trained, so no checkpoint metric."""
    monitor_mode = "max"

    def __init__(
        self,
        backbone: nn.Module,
        backbone_name: str,
        pooling: str = "cls",
        block: int = -1,
        gem_p: float = 3.0,
        image_size: int = 224,
        kappas: Sequence[int] = (1, 5, 10),
        top_k: int = 10,
        results_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.spec = EmbeddingSpec(str(backbone_name), pooling, int(block), image_size, float(gem_p))
        if not kappas or any(not isinstance(k, int) or k < 1 for k in kappas):
            raise ValueError(f"head.kappas={list(kappas)} must be whole numbers of at least 1, e.g. [1, 5, 10].")
        self.kappas, self.top_k = [int(k) for k in kappas], int(top_k)
        self.results_dir = None if results_dir is None else Path(results_dir)
        self.metric_notes: dict[str, str] = {}
        """Why a logged metric is NaN (train.py writes it as null with this reason), by metric name."""
        self._rows: list[tuple[int, int, Tensor]] = []

    def setup(self, stage: str) -> None:
        if not hasattr(self.trainer.datamodule, "ground_truth"):
            raise UserError(
                "head=retrieval evaluates the revisited retrieval protocol, but "
                f"{type(self.trainer.datamodule).__name__} has no queries and ground truth: choose data=roxford5k, "
                "data=rparis6k or data=revisited_synthetic."
            )

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Embed the batch's images (of any sizes: those of one size go through the backbone together)."""
        images = batch["image"]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for members in by_size.values():
            descriptors = embed(self.backbone, torch.stack([images[i] for i in members]), self.spec).float().cpu()
            for i, descriptor in zip(members, descriptors):
                self._rows.append((int(batch["part"][i]), int(batch["index"][i]), descriptor))

    def gathered(self) -> tuple[np.ndarray, np.ndarray]:
        """Database `(N, D)` and query `(Q, D)` descriptors in dataset order, from every process."""
        rows = [row for rows in all_gather(self._rows) for row in rows]  # every image once, from one process
        unique = {(part, index): descriptor for part, index, descriptor in rows}
        truth = self.trainer.datamodule.ground_truth
        sets = []
        for part, count in ((0, len(truth["imlist"])), (1, len(truth["qimlist"]))):
            stacked = torch.stack([unique[(part, i)] for i in range(count)]).numpy()
            if not np.isfinite(stacked).all():
                raise UserError(
                    "The backbone gave NaN or inf descriptors: its weights hold NaN or inf, or a float16 forward "
                    "overflowed. Fix: check backbone.checkpoint, or run in float32 (backbone.dtype=float32)."
                )
            sets.append(stacked)
        return sets[0], sets[1]

    def on_test_epoch_end(self) -> None:
        database, queries = self.gathered()
        truth = self.trainer.datamodule.ground_truth
        scores, rankings = search(build_index(database, kind="flat"), queries, len(database))
        results = revisited_map(rankings, truth["gnd"], self.kappas)
        for setting, result in results.items():
            self.log(f"test/mAP_{setting}", result["mAP"])
            for k, value in zip(self.kappas, result["mP@k"]):
                self.log(f"test/mP@{k}_{setting}", value)
            if not result["queries"]:
                reason = f"no query has a positive in the {SETTINGS[setting]} setting"
                names = [f"test/mAP_{setting}", *(f"test/mP@{k}_{setting}" for k in self.kappas)]
                self.metric_notes.update(dict.fromkeys(names, reason))
        if not self.trainer.is_global_zero:
            return  # every process computed the same numbers; rank 0 prints and writes them
        name = self.trainer.datamodule.name
        print(f"{name}: mAP " + ", ".join(f"{s}: {100 * r['mAP']:.2f}" for s, r in results.items()) + " (percent)")
        if self.results_dir is not None:
            self.write_queries(truth, results, scores, rankings)

    def write_queries(
        self, truth: dict[str, Any], results: dict[str, dict[str, Any]], scores: np.ndarray, rankings: np.ndarray
    ) -> None:
        """`retrieval_queries.json`: the spec, then per query its name, box, AP per setting and its top_k results."""
        rows = [
            {
                "query": query,
                "bbx": [float(v) for v in truth["gnd"][q]["bbx"]],
                **{f"AP_{s}": float(r["AP"][q]) for s, r in results.items()},
                "top": [
                    {"image": truth["imlist"][int(i)], "score": float(score)}
                    for i, score in zip(rankings[q, : self.top_k], scores[q, : self.top_k])
                ],
            }
            for q, query in enumerate(truth["qimlist"])
        ]
        reasons = {
            f"queries[{q}].AP_{s}": f"no positive in the {SETTINGS[s]} setting"
            for q in range(len(rows))
            for s in SETTINGS
        }
        write_json(self.results_dir / RESULTS_FILE, {"spec": self.spec.to_json(), "queries": rows}, reasons)
        print(f"Per-query results written to {self.results_dir / RESULTS_FILE}")
