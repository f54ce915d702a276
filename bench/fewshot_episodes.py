"""How long 600 few-shot episodes take per method on the CPU, on cached features: `python bench/fewshot_episodes.py`.

Prints one row per (method, K): seconds for all episodes and per episode. Features are random (D = ViT-S/14's 384),
since only the episode loop is timed; feature extraction runs once per image before it (see docs/classification.md).
"""

from __future__ import annotations

import argparse
import time

from utils.argtypes import int_at_least, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=positive_int, default=20)
    parser.add_argument("--per-class", type=positive_int, default=60)
    parser.add_argument("--dim", type=positive_int, default=384)
    parser.add_argument("--episodes", type=positive_int, default=600)
    parser.add_argument("--n-way", type=int_at_least(2), default=5)
    parser.add_argument("--queries", type=positive_int, default=15)
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before torch is imported

import numpy as np
import torch

from datamodules.classification.episodes import sample_episodes
from ops.classifiers import centre_and_project, cosine_knn, logistic_regression
from probes.fewshot import evaluate_episodes

METHODS = {"centre_and_project": centre_and_project, "knn": cosine_knn, "logistic_regression": logistic_regression}


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.n_way > args.classes:
        parser.error(f"--n-way {args.n_way} is more than --classes {args.classes}: an episode draws distinct classes.")
    if args.per_class < 5 + args.queries:
        parser.error(
            f"--per-class {args.per_class} is fewer than 5 shots + --queries {args.queries} images: "
            f"give --per-class {5 + args.queries} or more."
        )
    torch.set_num_threads(1)
    features = torch.randn(args.classes * args.per_class, args.dim)
    labels = np.repeat(np.arange(args.classes), args.per_class)
    print(f"{'method':>20}  {'K':>2}  {'total s':>8}  {'ms/episode':>10}")
    for k_shot in (1, 5):
        episodes = sample_episodes(labels, args.n_way, k_shot, args.queries, args.episodes, seed=0)
        for name, method in METHODS.items():
            start = time.perf_counter()
            evaluate_episodes(features, episodes, {name: method})
            seconds = time.perf_counter() - start
            print(f"{name:>20}  {k_shot:>2}  {seconds:8.2f}  {1000 * seconds / len(episodes):10.2f}")


if __name__ == "__main__":
    main()
