"""``compare_runs`` with several seeds per side: correctness averaged over seeds, groups resampled."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcat.errors import BcatError
from bcat.evaluation.compare import BETTER, Run, compare_runs

N = 40


def run(name: str, correct: dict) -> Run:
    return Run(Path(name), {"languages": {"anchor": "en", "seen": ["en", "fr"], "unseen": []}, "data_fingerprint": "x"},
               correct)


def runs_where_fr_right_below(*limits):
    """One run per limit: English always right, French right in the groups below the limit."""
    return [run(f"s{i}", {**{(f"g{g}", "en"): True for g in range(N)},
                          **{(f"g{g}", "fr"): g < limit for g in range(N)}}) for i, limit in enumerate(limits)]


def test_pooled_seeds_average_correctness_and_sum_discordant_pairs():
    a, b = runs_where_fr_right_below(20, 10), runs_where_fr_right_below(N, N)
    result = compare_runs(a, b, n_resamples=500)
    fr = result["per_language"]["fr"]
    assert fr["a"] == pytest.approx((20 + 10) / (2 * N)) and fr["b"] == 1.0
    assert (fr["a_only_correct"], fr["b_only_correct"]) == (0, (N - 20) + (N - 10))
    assert fr["n"] == N and fr["verdict"] == BETTER
    assert result["seeds_pooled"] == 2 and result["a"]["runs"] == 2
    assert result["headline"]["gap"]["a"] == pytest.approx(1 - 0.375) and result["headline"]["gap"]["b"] == 0


def test_one_run_repeated_as_seeds_keeps_the_interval_and_doubles_the_pairs():
    a, b = runs_where_fr_right_below(15), runs_where_fr_right_below(30)
    single = compare_runs(a[0], b[0], n_resamples=300)["per_language"]["fr"]
    pooled = compare_runs(a * 2, b * 2, n_resamples=300)["per_language"]["fr"]
    assert pooled["ci"] == single["ci"] and pooled["diff"] == single["diff"]
    assert pooled["b_only_correct"] == 2 * single["b_only_correct"] == 30


def test_pooling_needs_as_many_seeds_on_both_sides():
    with pytest.raises(BcatError, match="same number of runs"):
        compare_runs(runs_where_fr_right_below(1, 2), runs_where_fr_right_below(3), n_resamples=10)
