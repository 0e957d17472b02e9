"""How sure a ranking of models is: test top-1 with a 95% interval over seeds and test images, and a paired
comparison of two models on the same test images (numpy and pandas only).

A model here is a group of runs that differ only in their seed, all tested on the same images in the same
order. Its outcomes are a matrix `correct`, seeds x images, holding 1 where a run's prediction was right.

Top-1 and its interval, by a two-level bootstrap. The estimate is the mean of the matrix: the mean over
seeds of each run's test top-1. To see how far it could move, the experiment is redone 2000 times on
paper: each time, draw as many seeds as ran, with replacement, from the seeds that ran, and as many test
images as there are, with replacement, from the test images, and score the drawn seeds on the drawn
images. The middle 95% of those 2000 scores is the interval. The seeds carry the noise of training
(initialisation, batch order, augmentation); the images carry the noise of a finite test split. With one
seed the interval covers the test images only, and it is too narrow by the seed-to-seed spread it cannot
see (the tables show how many seeds ran).

The paired comparison. Two models tested on the same images are scored on the same drawn images each
time: an image that is hard for one model is usually hard for the other, and pairing cancels that shared
part of the noise. Each model's seeds are drawn independently (different models have different runs).
The estimate is the difference of the two means; its interval is the middle 95% of the 2000 differences.
When that interval contains 0 the two models are "within noise" of each other: these runs cannot tell
them apart.

The draws come from a fixed seed (RNG_SEED), so the same records give the same intervals and the book is
reproducible. The images are drawn from one stream and each model's seeds from streams of their own, so
neither the order of the models nor how many there are changes any number.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

RESAMPLES = 2000
LEVEL = 0.95
RNG_SEED = 17
CHUNK = 250          # resamples drawn at a time: a resample x images weight matrix stays small for big test splits


@dataclass(frozen=True)
class Interval:
    """An estimate and the bounds of its interval."""
    estimate: float
    low: float
    high: float

    def contains(self, value: float = 0.0) -> bool:
        return self.low <= value <= self.high


def correct_matrix(predictions: Sequence[Sequence[int]], labels: Sequence[int]) -> np.ndarray:
    """Seeds x images, 1.0 where a run's predicted class equals the image's label."""
    pred = np.asarray(predictions, dtype=np.int64)
    truth = np.asarray(labels, dtype=np.int64)
    if pred.ndim != 2 or pred.shape[0] == 0 or pred.shape[1] == 0 or pred.shape[1] != truth.shape[0]:
        raise ValueError(f"predictions must be runs x images with one label per image; got predictions of shape "
                         f"{pred.shape} and {truth.shape[0]} labels")
    return (pred == truth[None, :]).astype(np.float64)


def _check(correct: np.ndarray) -> np.ndarray:
    correct = np.asarray(correct, dtype=np.float64)
    if correct.ndim != 2 or 0 in correct.shape:
        raise ValueError(f"correct must be a non-empty seeds x images matrix; got shape {correct.shape}")
    return correct


def _weights(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """rows x n: how often each of n items is drawn when n are drawn with replacement, over n."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=rows) / n


def _scores(correct: np.ndarray, image_weights: np.ndarray, seed_rng: np.random.Generator) -> np.ndarray:
    """Top-1 of freshly drawn seeds on the drawn images, one score per row of image_weights."""
    per_seed = image_weights @ correct.T                 # resamples x seeds: each seed's top-1 on the drawn images
    return (per_seed * _weights(correct.shape[0], len(image_weights), seed_rng)).sum(axis=1)


def _draws(matrices: list[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Bootstrap scores of each matrix on shared image draws; each matrix's seeds drawn from its own stream."""
    n_images = matrices[0].shape[1]
    image_rng = np.random.default_rng([seed, 0])
    seed_rngs = [np.random.default_rng([seed, 1 + i]) for i in range(len(matrices))]
    out: list[list[np.ndarray]] = [[] for _ in matrices]
    for start in range(0, resamples, CHUNK):
        w = _weights(n_images, min(CHUNK, resamples - start), image_rng)
        for i, (m, rng) in enumerate(zip(matrices, seed_rngs)):
            out[i].append(_scores(m, w, rng))
    return [np.concatenate(o) for o in out]


def _interval(estimate: float, draws: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(low), float(high))


def top1_interval(correct: np.ndarray, resamples: int = RESAMPLES, seed: int = RNG_SEED,
                  level: float = LEVEL) -> Interval:
    """Mean test top-1 over seeds and its interval over seeds and test images (the two-level bootstrap)."""
    correct = _check(correct)
    (draws,) = _draws([correct], resamples, seed)
    return _interval(correct.mean(), draws, level)


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = RNG_SEED,
                      level: float = LEVEL) -> Interval:
    """Top-1 of a minus top-1 of b, and its interval: the same image draws for both, seeds drawn apart."""
    a, b = _check(a), _check(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a paired comparison needs the same test images; got {a.shape[1]} and {b.shape[1]} images")
    da, db = _draws([a, b], resamples, seed)
    return _interval(a.mean() - b.mean(), da - db, level)


COLUMNS = ["seeds", "images", "top1", "top1_low", "top1_high", "diff", "diff_low", "diff_high", "best",
           "within_noise"]


def compare(models: dict[Hashable, np.ndarray], resamples: int = RESAMPLES, seed: int = RNG_SEED,
            level: float = LEVEL) -> pd.DataFrame:
    """One row per model (indexed by its key), most accurate first: seeds, images, top-1 and its interval,
    the difference from the best model and its paired interval, whether it is the best, and whether its
    difference from the best is within noise (the best is within noise of itself).

    The best is the highest mean top-1 (the first given among equals). Every matrix must cover the same
    test images in the same order."""
    if not models:
        return pd.DataFrame(columns=COLUMNS)
    keys = list(models)
    matrices = [_check(models[k]) for k in keys]
    if len({m.shape[1] for m in matrices}) > 1:
        raise ValueError("every model must be tested on the same images; got image counts "
                         + ", ".join(f"{k}: {m.shape[1]}" for k, m in zip(keys, matrices)))
    means = [m.mean() for m in matrices]
    best = int(np.argmax(means))
    rows = []
    for k, m in zip(keys, matrices):
        top1 = top1_interval(m, resamples, seed, level)
        is_best = k == keys[best]
        diff = Interval(0.0, 0.0, 0.0) if is_best else paired_difference(m, matrices[best], resamples, seed, level)
        rows.append({"seeds": m.shape[0], "images": m.shape[1], "top1": top1.estimate, "top1_low": top1.low,
                     "top1_high": top1.high, "diff": diff.estimate, "diff_low": diff.low, "diff_high": diff.high,
                     "best": is_best, "within_noise": diff.contains(0.0)})
    table = pd.DataFrame(rows, index=pd.Index(keys, tupleize_cols=False), columns=COLUMNS)
    order = sorted(range(len(keys)), key=lambda i: (-means[i], i))
    return table.iloc[order]
