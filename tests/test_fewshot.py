"""Few-shot, k-NN and linear-probe methods on synthetic features: known accuracies, numpy references, episodes."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from datamodules.classification.episodes import load_episodes, sample_episodes, save_episodes
from datamodules.errors import DatasetError
from ops.classifiers import (
    centre_and_project,
    cosine_knn,
    cosine_topk,
    logistic_regression,
    mean_confidence_interval,
    weighted_votes,
)
from ops.linear_classifiers import grid_accuracy, linear_input, probe_grid, train_grid
from probes.fewshot import evaluate_episodes

N_CLASSES, PER_CLASS, DIM = 10, 30, 32


def class_features(noise: float, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """(N_CLASSES * PER_CLASS, DIM) features: class c at 3 * e_c plus an offset shared by all, with Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.eye(N_CLASSES, DIM) + 5 * torch.randn(DIM, generator=g)
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    return centres[labels] + noise * torch.randn(len(labels), DIM, generator=g), labels


METHODS = {"centre_and_project": centre_and_project, "knn": cosine_knn, "logistic_regression": logistic_regression}


def test_separable_classes_are_always_right() -> None:
    features, labels = class_features(noise=0.1)
    episodes = sample_episodes(labels, n_way=5, k_shot=1, n_queries=5, n_episodes=40, seed=0)
    for name, accs in evaluate_episodes(features, episodes, METHODS).items():
        assert accs.shape == (40,) and accs.min() == 1.0, name


def test_classless_features_are_at_chance() -> None:
    g = torch.Generator().manual_seed(1)
    features, labels = torch.randn(N_CLASSES * PER_CLASS, DIM, generator=g), np.repeat(np.arange(N_CLASSES), PER_CLASS)
    episodes = sample_episodes(labels, n_way=5, k_shot=5, n_queries=15, n_episodes=200, seed=0)
    for name, accs in evaluate_episodes(features, episodes, METHODS).items():
        mean, ci95 = mean_confidence_interval(accs)
        assert abs(mean - 1 / 5) < 2 * ci95 + 0.01, name


def episode_tensors(features: torch.Tensor, episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_way, k_shot = episode.support.shape
    return (
        features[episode.support.ravel()],
        torch.arange(n_way).repeat_interleave(k_shot),
        features[episode.query.ravel()],
    )


def numpy_centre_and_project(
    support: np.ndarray, labels: np.ndarray, query: np.ndarray, mean: np.ndarray
) -> np.ndarray:
    unit = lambda x: (x - mean) / np.linalg.norm(x - mean, axis=1, keepdims=True)
    centroids = np.stack([unit(support)[labels == c].mean(0) for c in range(labels.max() + 1)])
    return np.linalg.norm(unit(query)[:, None] - centroids[None], axis=2).argmin(1)


def numpy_knn(support: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int, temperature: float) -> np.ndarray:
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit(query) @ unit(support).T
    votes = np.zeros((len(query), labels.max() + 1))
    for row, order in enumerate(np.argsort(-sims, axis=1)[:, :k]):
        for j in order:
            votes[row, labels[j]] += np.exp(sims[row, j] / temperature)
    return votes


@pytest.mark.parametrize("k_shot", [1, 5])
def test_methods_agree_with_numpy(k_shot: int) -> None:
    features, labels = class_features(noise=2.0)
    base_mean = features[:50].mean(0)
    for episode in sample_episodes(labels, n_way=5, k_shot=k_shot, n_queries=6, n_episodes=10, seed=3):
        support, support_labels, query = episode_tensors(features, episode)
        s, sl, q = support.double().numpy(), support_labels.numpy(), query.double().numpy()
        scp = centre_and_project(support.double(), support_labels, query.double(), 5).argmax(1).numpy()
        assert (scp == numpy_centre_and_project(s, sl, q, s.mean(0))).all()
        based = centre_and_project(support.double(), support_labels, query.double(), 5, mean=base_mean.double())
        assert (based.argmax(1).numpy() == numpy_centre_and_project(s, sl, q, base_mean.double().numpy())).all()
        votes = numpy_knn(s, sl, q, k=3, temperature=0.07)
        knn = cosine_knn(support.double(), support_labels, query.double(), 5, k=3, temperature=0.07).numpy()
        np.testing.assert_allclose(knn, votes / votes.sum(1, keepdims=True), rtol=1e-9)
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
        reference = LogisticRegression(C=1.0, max_iter=1000).fit(unit(s), sl).predict_proba(unit(q))
        probs = logistic_regression(support.double(), support_labels, query.double(), 5).numpy()
        np.testing.assert_allclose(probs, reference, atol=1e-4)


def test_knn_over_a_large_bank_matches_numpy_in_chunks() -> None:
    features, labels = class_features(noise=2.0)
    sims, idx = cosine_topk(features.double(), features[:37].double(), k=20, chunk_size=8)
    votes = weighted_votes(sims, torch.from_numpy(labels)[idx], N_CLASSES, 0.07).numpy()
    np.testing.assert_allclose(
        votes, numpy_knn(features.double().numpy(), labels, features[:37].double().numpy(), 20, 0.07), rtol=1e-9
    )


def test_confidence_interval_is_the_normal_one() -> None:
    accs = np.random.default_rng(0).uniform(0.4, 0.9, size=600)
    mean, half_width = mean_confidence_interval(accs)
    z = statistics.NormalDist().inv_cdf(0.975)
    assert mean == pytest.approx(statistics.fmean(accs))
    assert half_width == pytest.approx(z * statistics.stdev(accs) / math.sqrt(len(accs)))
    assert mean_confidence_interval(np.full(10, 0.5)) == (0.5, 0.0)


def test_episodes_are_seeded_disjoint_and_replayable(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    first = sample_episodes(labels, n_way=5, k_shot=2, n_queries=4, n_episodes=30, seed=7)
    again = sample_episodes(labels, n_way=5, k_shot=2, n_queries=4, n_episodes=30, seed=7)
    other = sample_episodes(labels, n_way=5, k_shot=2, n_queries=4, n_episodes=30, seed=8)
    assert all((a.support == b.support).all() and (a.query == b.query).all() for a, b in zip(first, again))
    assert any((a.support != b.support).any() for a, b in zip(first, other))
    for ep in first:
        assert ep.support.shape == (5, 2) and ep.query.shape == (5, 4)
        rows = np.concatenate([ep.support, ep.query], axis=1)
        assert len(set(labels[rows[:, 0]])) == 5 and all(len(set(labels[r])) == 1 for r in rows)
        assert len(np.unique(rows)) == rows.size
    names = [f"c{label}/{i}.png" for i, label in enumerate(labels)]
    save_episodes(tmp_path / "episodes.json", first, names)
    loaded = load_episodes(tmp_path / "episodes.json", names, labels)
    assert all((a.support == b.support).all() and (a.query == b.query).all() for a, b in zip(first, loaded))
    with pytest.raises(DatasetError, match="not in the dataset"):
        load_episodes(tmp_path / "episodes.json", names[:-50], labels[:-50])


@pytest.mark.parametrize(
    ("support", "query", "message"),
    [
        ([["a/0", "a/1"], ["b/0", "b/1"]], [["a/1"], ["b/2"]], "image 'a/1' both as a support and as a query"),
        ([["a/0", "a/1"], ["b/0", "b/1"]], [["a/2"], ["a/3"]], "query 'a/3' of row 1 is not of that row's class"),
        ([["a/0", "b/1"], ["b/0", "b/2"]], [["a/2"], ["b/3"]], "the supports of row 0 are of 2 classes"),
        ([["a/0", "a/1"], ["a/2", "a/3"]], [["a/4"], ["a/5"]], "meant to be 2-way, but rows 0 and 1 are of the same"),
    ],
)
def test_episodes_file_that_is_not_n_way_is_refused(tmp_path: Path, support: list, query: list, message: str) -> None:
    """An episode whose query is one of its supports, of another class, or two rows of one class: refused by name."""
    names = [f"{c}/{i}" for c in "ab" for i in range(6)]
    labels = np.repeat([0, 1], 6)
    episodes = [{"support": [["a/0", "a/1"], ["b/0", "b/1"]], "query": [["a/2"], ["b/2"]]}]
    episodes.append({"support": support, "query": query})
    (tmp_path / "episodes.json").write_text(json.dumps({"episodes": episodes}))
    with pytest.raises(DatasetError, match=rf"Episode 1 of episodes file .*episodes\.json.*{message}.*Fix: "):
        load_episodes(tmp_path / "episodes.json", names, labels)


def test_linear_probe_grid_learns_separable_classes() -> None:
    features, labels = class_features(noise=0.3)
    tokens = torch.stack([features.roll(1, dims=1), features], dim=1)  # two "blocks"
    means = features.flip(1)
    assert linear_input(tokens, means, 2, True).shape == (len(labels), 3 * DIM)
    assert torch.equal(linear_input(tokens, means, 1, False), features)
    grid = probe_grid([1, 2], [False, True], [1e-3, 0.1])
    y = torch.from_numpy(labels)
    heads = train_grid(grid, tokens, means, y, N_CLASSES, epochs=20, batch_size=32)
    accs = grid_accuracy(heads, grid, tokens, means, y)
    assert len(accs) == 8 and max(accs) == 1.0
    assert [c.n_blocks for c in grid] == [1, 1, 1, 1, 2, 2, 2, 2] and [h.in_features for h in heads][:2] == [DIM, DIM]
