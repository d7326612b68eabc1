"""Bootstrap over groups and the exact McNemar test, against hand-computed cases and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from bcat.evaluation.stats import (
    GroupMatrix,
    all_correct_rows,
    bootstrap_ci,
    gap_statistic,
    language_accuracy,
    mcnemar_exact,
    mean_of_columns,
    paired_bootstrap_ci,
    percentile_interval,
    resample_counts,
)


@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),
    (0, 1, 1.0),                      # 2 * 1/2 = 1
    (0, 5, 2 / 32),                   # 2 * (1/2)^5
    (1, 5, 2 * (1 + 6) / 64),         # 2 * P[X <= 1], n = 6
    (2, 8, 2 * (1 + 10 + 45) / 1024),
    (4, 4, 1.0),
    (7, 2, 2 * (1 + 9 + 36) / 512),   # symmetric in b and c
])
def test_mcnemar_hand_computed(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("b, c", [(0, 3), (1, 9), (3, 11), (10, 10), (12, 30), (40, 25), (100, 130), (1, 1)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    expected = binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_group_matrix_and_accuracy():
    m = GroupMatrix.from_items([("g1", "en", True), ("g1", "fr", False), ("g2", "en", True), ("g3", "fr", True)])
    assert m.groups == ["g1", "g2", "g3"] and m.langs == ["en", "fr"]
    assert np.isnan(m.values[1, 1]) and np.isnan(m.values[2, 0])
    assert language_accuracy(m.values).tolist() == [1.0, 0.5]
    # resample drawing g1 twice and g3 once: en = 2/2, fr = (0 + 0 + 1) / 3
    acc = language_accuracy(m.values, np.array([[2, 0, 1]]))
    assert acc[0, 0] == 1.0 and acc[0, 1] == pytest.approx(1 / 3)


def test_resample_counts_draw_n_groups_each():
    counts = resample_counts(7, 50, seed=1)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert (resample_counts(7, 50, seed=1) == counts).all()  # seeded


def test_bootstrap_of_constant_data_is_a_point():
    values = np.ones((20, 2))
    assert bootstrap_ci(values, lambda a: a[:, 0], n_resamples=200) == [1.0, 1.0]


def test_bootstrap_mean_matches_normal_approximation():
    # 0.3 accuracy over 400 groups: the percentile interval is close to p +- 1.96 sqrt(p(1-p)/n)
    values = np.array([[1.0]] * 120 + [[0.0]] * 280)
    lo, hi = bootstrap_ci(values, lambda a: a[:, 0], n_resamples=4000, seed=3)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert lo == pytest.approx(0.3 - half, abs=0.01) and hi == pytest.approx(0.3 + half, abs=0.01)


def test_bootstrap_resamples_groups_not_items():
    # Languages perfectly correlated within groups: the gap is 0 in every resample.
    col = np.array([1.0, 0.0] * 10)
    values = np.stack([col, col, col], axis=1)
    assert bootstrap_ci(values, gap_statistic(0, [1, 2]), n_resamples=500) == [0.0, 0.0]


def test_gap_and_means():
    acc = np.array([[0.8, 0.6, 0.4, 0.2]])
    assert mean_of_columns([1, 2])(acc).tolist() == [pytest.approx(0.5)]
    assert gap_statistic(0, [1, 2, 3])(acc).tolist() == [pytest.approx(0.4)]
    assert np.isnan(mean_of_columns([])(acc)).all()


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(60, 2)).astype(float)
    assert paired_bootstrap_ci(a, a.copy(), lambda x: x[:, 0], n_resamples=300) == [0.0, 0.0]
    b = a.copy()
    b[:, 1] = 1.0  # B fixes every error in column 1: the difference is positive in every resample
    lo, hi = paired_bootstrap_ci(a, b, lambda x: x[:, 1], n_resamples=300)
    assert 0 < lo <= hi
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, b[:10], lambda x: x[:, 0])


def test_percentile_interval_and_all_correct_rows():
    assert percentile_interval(np.array([np.nan, np.nan])) is None
    assert percentile_interval(np.arange(101.0), level=0.9) == pytest.approx([5.0, 95.0])
    rows = all_correct_rows(np.array([[1.0, 1.0], [1.0, 0.0], [1.0, np.nan]]))
    assert rows[:, 0].tolist() == [1.0, 0.0]
