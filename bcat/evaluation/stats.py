"""Confidence intervals and significance tests over GROUPS.

The items of one group (the same question in several languages) are not independent, so the unit
of resampling is the group: a bootstrap resample draws groups with replacement and keeps all their
languages. Intervals are percentile intervals.

Every statistic we report is a function of a ``groups x languages`` matrix of 0/1 correctness
(``NaN`` where a group lacks a language), so one resample is a vector of group counts ``c`` and the
per-language accuracy of the resample is ``(c @ V) / (c @ P)`` with ``V`` the matrix with NaN set to
0 and ``P`` the presence mask: the whole bootstrap is two matrix products.

Several training seeds add a second source of noise: the trained model itself. Pooling the seeds and
resampling groups alone treats the trained models as fixed and leaves that noise out. The
seed-aware interval (:func:`hierarchical_paired_differences`) resamples the seeds and the groups
(seeds and items are crossed: every seed was evaluated on the same groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np


@dataclass
class GroupMatrix:
    """Correctness as a ``groups x languages`` matrix (1.0, 0.0, or NaN when the item is absent)."""

    groups: list[str]
    langs: list[str]
    values: np.ndarray

    @classmethod
    def from_items(cls, items: Sequence[tuple[str, str, bool]], langs: Optional[Sequence[str]] = None) -> "GroupMatrix":
        """Build from ``(group, lang, correct)`` triples; groups keep their first-seen order."""
        groups = list(dict.fromkeys(g for g, _, _ in items))
        langs = list(langs) if langs is not None else list(dict.fromkeys(l for _, l, _ in items))
        gi, li = {g: i for i, g in enumerate(groups)}, {l: i for i, l in enumerate(langs)}
        values = np.full((len(groups), len(langs)), np.nan)
        for g, l, c in items:
            if l in li:
                values[gi[g], li[l]] = float(c)
        return cls(groups, langs, values)

    def col(self, lang: str) -> int:
        return self.langs.index(lang)


def language_accuracy(values: np.ndarray, counts: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-language accuracy, for the data (``counts=None``) or for each row of resample ``counts``.

    >>> v = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0]])
    >>> language_accuracy(v).round(3).tolist()
    [0.667, 0.5]
    >>> language_accuracy(v, np.array([[2, 0, 1]])).round(3).tolist()
    [[0.667, 0.333]]
    """
    present = (~np.isnan(values)).astype(float)
    filled = np.nan_to_num(values, nan=0.0)
    c = np.ones((1, values.shape[0])) if counts is None else counts.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (c @ filled) / (c @ present)
    return acc[0] if counts is None else acc


def resample_counts(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each group is drawn in each bootstrap resample: ``n_resamples x n_groups`` counts."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> Optional[list[float]]:
    """Percentile interval of bootstrap samples (NaN samples, from resamples lacking a language, ignored)."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *, n_resamples: int = 2000,
                 seed: int = 0, level: float = 0.95) -> Optional[list[float]]:
    """Bootstrap interval of ``statistic`` over groups (rows of ``values``).

    ``statistic`` maps a ``resamples x languages`` accuracy matrix to one value per resample.

    >>> v = np.array([[1.0], [0.0]] * 50)  # accuracy 0.5 over 100 groups
    >>> lo, hi = bootstrap_ci(v, lambda acc: acc[:, 0], n_resamples=2000, seed=0)
    >>> 0.38 < lo < 0.42 and 0.58 < hi < 0.62
    True
    """
    if values.shape[0] == 0:
        return None
    counts = resample_counts(values.shape[0], n_resamples, seed)
    return percentile_interval(statistic(language_accuracy(values, counts)), level)


def paired_bootstrap_ci(values_a: np.ndarray, values_b: np.ndarray,
                        statistic: Callable[[np.ndarray], np.ndarray], *, n_resamples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> Optional[list[float]]:
    """Interval of ``statistic(B) - statistic(A)``, resampling the same groups for both runs (paired)."""
    if values_a.shape != values_b.shape:
        raise ValueError("paired bootstrap needs the same groups and languages in both runs")
    if values_a.shape[0] == 0:
        return None
    counts = resample_counts(values_a.shape[0], n_resamples, seed)
    diff = statistic(language_accuracy(values_b, counts)) - statistic(language_accuracy(values_a, counts))
    return percentile_interval(diff, level)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of ``b`` vs ``c`` discordant pairs at p = 1/2.

    ``b`` counts pairs right in A and wrong in B, ``c`` the reverse. ``p = min(1, 2 P[X <= min(b, c)])``
    with ``X ~ Binomial(b + c, 1/2)``; no discordant pairs gives 1.

    >>> mcnemar_exact(0, 5)  # 2 * (1/2)**5
    0.0625
    >>> mcnemar_exact(3, 3), mcnemar_exact(0, 0)
    (1.0, 1.0)
    """
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def mean_of_columns(cols: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic: the macro mean of the accuracies in ``cols`` (NaN when ``cols`` is empty)."""
    cols = list(cols)

    def stat(acc: np.ndarray) -> np.ndarray:
        if not cols:
            return np.full(acc.shape[0], np.nan)
        return acc[:, cols].mean(axis=1)

    return stat


def gap_statistic(anchor: int, others: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic: anchor accuracy minus the macro mean of ``others``."""
    mean = mean_of_columns(others)
    return lambda acc: acc[:, anchor] - mean(acc)


def all_correct_rows(values: np.ndarray) -> np.ndarray:
    """A one-column matrix: 1 where a group is correct in every column, over complete groups only."""
    complete = values[~np.isnan(values).any(axis=1)]
    return complete.min(axis=1, initial=1.0)[:, None]


def hierarchical_paired_differences(values_a: Sequence[np.ndarray], values_b: Sequence[np.ndarray],
                                    statistic: Callable[[np.ndarray], np.ndarray], *, n_resamples: int = 2000,
                                    seed: int = 0) -> np.ndarray:
    r"""Bootstrap samples of ``statistic(B) - statistic(A)`` that count training noise: seeds and groups.

    ``values_a[s]`` and ``values_b[s]`` are the correctness matrices of the two arms trained with seed
    ``s`` (paired: the same seed index on both sides, the same groups and languages everywhere). Each
    resample draws ``S`` seed pairs with replacement and, once, the groups with replacement; every
    drawn seed pair is scored on that same group draw, because all seeds were evaluated on the same
    items (seeds and items are crossed, not nested). Its value is the mean over the drawn pairs:

    .. math:: d^* = \frac{1}{S} \sum_{j=1}^{S} \big[f(\mathrm{acc}(c, B_{s_j})) - f(\mathrm{acc}(c, A_{s_j}))\big],
              \quad s_j \sim U\{1..S\},\ c \sim \mathrm{Mult}(G, 1/G)

    When the seeds agree this is the paired group bootstrap (identical seeds give exactly its
    interval); when they disagree, the seed draw widens it. With few seeds the seed level has few
    distinct draws (10 multisets for 3 seeds), so the interval is coarse, but it does not treat
    the trained models as fixed.

    >>> same = [np.array([[1.0], [0.0]] * 20)] * 3
    >>> better = [np.array([[1.0], [1.0]] * 20)] * 3
    >>> d = hierarchical_paired_differences(same, better, lambda acc: acc[:, 0], n_resamples=500)
    >>> bool(d.min() > 0.2), d.shape
    (True, (500,))
    """
    if len(values_a) != len(values_b) or not values_a:
        raise ValueError("hierarchical bootstrap needs the same (non-zero) number of seeds on both sides")
    shape = values_a[0].shape
    if any(v.shape != shape for v in [*values_a, *values_b]):
        raise ValueError("hierarchical bootstrap needs the same groups and languages in every run")
    n_seeds = len(values_a)
    counts = resample_counts(shape[0], n_resamples, seed)  # the paired group bootstrap's own draws
    per_seed = np.stack([statistic(language_accuracy(b, counts)) - statistic(language_accuracy(a, counts))
                         for a, b in zip(values_a, values_b)], axis=1)  # resamples x seeds
    drawn = np.random.default_rng([seed, 1]).multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples)
    return (per_seed * drawn).sum(axis=1) / n_seeds


def bootstrap_p_value(samples: np.ndarray) -> Optional[float]:
    """Two-sided bootstrap p-value of "the difference is 0": twice the smaller share of resamples on
    either side of 0 (at most 1).

    >>> bootstrap_p_value(np.array([0.1, 0.2, -0.1, 0.3]))
    0.5
    """
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None
    return float(min(1.0, 2.0 * min((samples <= 0).mean(), (samples >= 0).mean())))


def holm(p_values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjustment of ``p_values`` for multiple comparisons (``None`` entries skipped).

    Sorted ascending, the ``i``-th smallest of ``m`` p-values becomes ``max_{j<=i} min(1, (m - j) p_(j))``
    (0-based ``j``); rejecting where the adjusted value is below alpha controls the family-wise error
    rate at alpha.

    >>> holm([0.01, 0.04, 0.03, None])
    [0.03, 0.06, 0.06, None]
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    out: list[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
