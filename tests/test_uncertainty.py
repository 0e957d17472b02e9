"""studylib.uncertainty on synthetic predictions whose answers are known by hand."""
import numpy as np
import pytest

from studylib.uncertainty import Interval, compare, correct_matrix, paired_difference, top1_interval

N = 400   # test images


def right_on(n_right: int, n: int = N, seeds: int = 1) -> np.ndarray:
    """seeds x n: every seed right on the first n_right images, wrong on the rest."""
    row = np.zeros(n)
    row[:n_right] = 1
    return np.tile(row, (seeds, 1))


def test_correct_matrix_compares_each_prediction_with_its_label():
    m = correct_matrix([[0, 1, 2], [0, 0, 2]], [0, 1, 1])
    assert m.tolist() == [[1, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="one label per image"):
        correct_matrix([[0, 1]], [0, 1, 2])


def test_identical_models_are_within_noise():
    rng = np.random.default_rng(0)
    a = (rng.random((3, N)) < 0.6).astype(float)
    d = paired_difference(a, a.copy())
    assert d.estimate == 0 and d.contains(0) and d.low < 0 < d.high   # seeds drawn apart: a real spread around 0


def test_a_model_right_everywhere_beats_one_wrong_on_half():
    d = paired_difference(right_on(N, seeds=2), right_on(N // 2, seeds=2))
    assert d.estimate == pytest.approx(0.5)
    assert not d.contains(0) and 0.4 < d.low < 0.5 < d.high < 0.6


def test_one_seed_interval_is_the_binomial_one():
    # one seed right on half of 400 images: the interval is the images' alone, 0.5 +- 1.96 * sqrt(0.25 / 400)
    t = top1_interval(right_on(N // 2))
    half = 1.96 * np.sqrt(0.25 / N)
    assert t.estimate == 0.5
    assert t.low == pytest.approx(0.5 - half, abs=0.004) and t.high == pytest.approx(0.5 + half, abs=0.004)


def test_the_seeds_are_resampled_too():
    # one seed right everywhere, the other wrong everywhere: drawing two seeds gives 0, 0.5 or 1 with
    # chances 1/4, 1/2, 1/4, so the 95% interval is [0, 1] whatever the images
    both = np.vstack([np.ones(N), np.zeros(N)])
    t = top1_interval(both)
    assert t.estimate == 0.5 and t.low == pytest.approx(0.0) and t.high == pytest.approx(1.0)


def test_pairing_cancels_the_images_both_models_get_right_or_wrong():
    # b is right on 290 images, a on the same 290 and 10 more: a is better on every draw of images that
    # holds one of those 10 (all but e^-10 of them). Drawing images apart for each model would give an
    # interval of about +-0.06 around 0.025, which contains 0.
    d = paired_difference(right_on(300), right_on(290))
    assert d.estimate == pytest.approx(0.025)
    assert d.low > 0


def test_fixed_seed_gives_the_same_intervals_and_another_seed_others():
    rng = np.random.default_rng(1)
    a, b = (rng.random((3, N)) < 0.6).astype(float), (rng.random((2, N)) < 0.55).astype(float)
    assert paired_difference(a, b) == paired_difference(a, b)
    assert top1_interval(a) == top1_interval(a)
    assert top1_interval(a, seed=1) != top1_interval(a)


def test_compare_ranks_marks_the_best_and_what_is_within_noise():
    # close: wrong on 10 images the best gets right, right on 6 it gets wrong (a difference of -4 of 400 images)
    close = np.roll(right_on(296, seeds=3), 10, axis=1)
    models = {"worse": right_on(200, seeds=2), "best": right_on(300, seeds=2), "close": close}
    t = compare(models)
    assert list(t.index) == ["best", "close", "worse"]
    assert t.loc["best", "best"] and t.loc["best", "within_noise"] and t.loc["best", "diff"] == 0
    assert t.loc["close", "within_noise"] and not t.loc["worse", "within_noise"]
    assert t.loc["worse", "diff"] == pytest.approx(-0.25) and t.loc["worse", "diff_high"] < 0
    assert t.loc["close", "seeds"] == 3 and t.loc["close", "images"] == N
    # a model's numbers do not depend on which other models are in the table, nor on their order
    alone = compare({"close": models["close"], "best": models["best"]})
    assert alone.loc["close"].equals(t.loc["close"])
    i = top1_interval(models["close"])
    assert Interval(t.loc["close", "top1"], t.loc["close", "top1_low"], t.loc["close", "top1_high"]) == i


def test_compare_refuses_models_tested_on_different_images():
    with pytest.raises(ValueError, match="same images"):
        compare({"a": right_on(10, n=20), "b": right_on(10, n=30)})
