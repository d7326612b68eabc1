"""Seed-aware statistics: the hierarchical (seeds, then groups) interval, Holm's correction, seed pairs
and kinds of item in ``compare_runs``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bcat.evaluation.compare import BETTER, SAME, Run, compare_runs, format_table, kinds_for
from bcat.evaluation.stats import bootstrap_p_value, hierarchical_paired_differences, holm

N = 200


def run(name: str, fr_right_below: int, en_right_below: int = N) -> Run:
    """English right in the groups below ``en_right_below``, French below ``fr_right_below``."""
    return Run(Path(name), {"languages": {"anchor": "en", "seen": ["en", "fr"], "unseen": []}, "data_fingerprint": "x"},
               {**{(f"g{g:03d}", "en"): g < en_right_below for g in range(N)},
                **{(f"g{g:03d}", "fr"): g < fr_right_below for g in range(N)}})


def fr_intervals(a_limits, b_limits) -> tuple[list, list, dict]:
    result = compare_runs([run(f"a{i}", x) for i, x in enumerate(a_limits)],
                          [run(f"b{i}", x) for i, x in enumerate(b_limits)], n_resamples=2000)
    fr = result["per_language"]["fr"]
    return fr["ci"], fr["ci_groups_only"], result


def test_seeds_that_disagree_widen_the_interval_to_cover_zero():
    # B minus A per seed: +30, -20, +5 points; pooled +5, which the groups-only interval calls significant.
    seed_aware, groups_only, result = fr_intervals([100, 100, 100], [160, 60, 110])
    assert groups_only[0] > 0, "the pooled interval treats the three models as fixed and excludes 0"
    assert seed_aware[0] < 0 < seed_aware[1]
    assert seed_aware[1] - seed_aware[0] > 3 * (groups_only[1] - groups_only[0])
    assert result["per_language"]["fr"]["verdict"] == SAME
    assert [p["diff"]["non_english_mean"] for p in result["per_seed"]] == pytest.approx([0.30, -0.20, 0.05])


def test_seeds_that_agree_give_about_the_groups_only_interval():
    seed_aware, groups_only, result = fr_intervals([100, 100, 100], [128, 130, 132])
    assert seed_aware == pytest.approx(groups_only, abs=0.015)
    assert seed_aware[0] > 0 and result["per_language"]["fr"]["verdict"] == BETTER


def test_identical_seeds_give_exactly_the_single_seed_interval():
    samples_one = hierarchical_paired_differences([np.eye(4)], [np.ones((4, 4))], lambda acc: acc[:, 0], seed=3)
    samples_three = hierarchical_paired_differences([np.eye(4)] * 3, [np.ones((4, 4))] * 3, lambda acc: acc[:, 0],
                                                    seed=3)
    assert np.array_equal(samples_one, samples_three)


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None]) == [0.5, None] and holm([]) == []


def test_bootstrap_p_value_is_two_sided():
    assert bootstrap_p_value(np.array([1.0] * 99 + [-1.0])) == pytest.approx(0.02)
    assert bootstrap_p_value(np.array([1.0, -1.0])) == 1.0


def six_languages(name: str, right: dict) -> Run:
    langs = ["en", "de", "es", "fr", "hi", "ja"]
    return Run(Path(name), {"languages": {"anchor": "en", "seen": langs, "unseen": []}, "data_fingerprint": "x"},
               {(f"g{g:03d}", l): g < right.get(l, 20) for g in range(40) for l in langs})


def test_holm_turns_a_lone_nominal_difference_into_no_verdict():
    # French: 5 items right only in B, none the other way: exact McNemar p = 0.0625... use 6: p = 0.03125
    result = compare_runs(six_languages("a", {}), six_languages("b", {"fr": 26}), n_resamples=1000)
    fr = result["per_language"]["fr"]
    assert fr["p"] == pytest.approx(0.03125) and fr["ci"][0] > 0
    assert fr["p_holm"] == pytest.approx(6 * 0.03125) and fr["verdict"] == SAME
    assert "Holm" in result["rule"] and "leaves training noise out" in result["interval"]


def test_kinds_of_item_break_the_headline_down(tmp_path):
    kinds = {f"g{g:03d}": ("compare" if g % 2 else "name") for g in range(N)}
    result = compare_runs(run("a", 100), run("b", 120), n_resamples=300, kinds=kinds)
    assert set(result["by_kind"]) == {"compare", "name"}
    assert sum(k["n_groups"] for k in result["by_kind"].values()) == N
    assert result["by_kind"]["compare"]["headline"]["non_english_mean"]["diff"] == pytest.approx(0.10)
    assert "by kind of item" in format_table(result)


def test_kinds_come_from_the_evaluated_file_only_while_it_is_unchanged(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"group": g, "lang": l, "kind": k}) + "\n"
                            for g, k in (("g1", "name"), ("g2", "number")) for l in ("en", "fr")), encoding="utf-8")
    from bcat.evaluation.scoring import file_sha256

    evaluated = Run(tmp_path, {"data": str(data), "data_fingerprint": file_sha256(data)}, {})
    assert kinds_for(evaluated) == {"g1": "name", "g2": "number"}
    data.write_text(data.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert kinds_for(evaluated) is None
    assert kinds_for(evaluated, data) == {"g1": "name", "g2": "number"}


def test_compare_is_a_python_call_with_typed_options(tmp_path, capsys):
    from bcat.evaluation.compare import CompareOptions, run_compare

    folders = []
    for name, right in (("a", 100), ("b", 130)):
        folder = tmp_path / name
        folder.mkdir()
        r = run(name, right)
        (folder / "metrics.json").write_text(json.dumps({**r.metrics, "per_language": {}}), encoding="utf-8")
        (folder / "predictions.jsonl").write_text("".join(
            json.dumps({"group": g, "lang": l, "strict_correct": c}) + "\n" for (g, l), c in r.correct.items()),
            encoding="utf-8")
        folders.append(str(folder))
    result = run_compare(CompareOptions(runs_a=[folders[0]], runs_b=[folders[1]], output=str(tmp_path / "out"),
                                        bootstrap=200))
    assert result["headline"]["non_english_mean"]["diff"] == pytest.approx(0.15)
    assert (tmp_path / "out" / "comparison.json").is_file() and "p Holm" in capsys.readouterr().out
