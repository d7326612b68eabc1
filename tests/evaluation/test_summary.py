"""Headline numbers and comparisons on hand-made predictions."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcat.data.rag import RagItem
from bcat.errors import BcatError
from bcat.evaluation.compare import (
    BETTER,
    SAME,
    WORSE,
    Run,
    check_same_items,
    compare_runs,
    format_table,
)
from bcat.evaluation.scoring import ScoringOptions, score_outputs

ANSWERS = {"en": "{n} months", "fr": "{n} mois", "de": "{n} Monate", "th": "{n} เดือน"}


def items(n_groups=4, langs=("en", "fr", "de", "th")):
    return [RagItem(f"g{g}", lang, "q?", ("p",), (ANSWERS[lang].format(n=10 + g),),
                    candidates=((ANSWERS[lang].format(n=90 + g),),))
            for g in range(n_groups) for lang in langs]


def outputs_for(its, right):
    """The answer where ``right(item)`` else a wrong number."""
    return [" " + (i.answers[0] if right(i) else i.answers[0].replace("1", "9")) + "\nQuestion:" for i in its]


def test_summary_known_values():
    its = items()
    # en right everywhere; fr right in g0, g1; de right in g0; th (unseen) right in g0, g1, g2
    right = {"en": 4, "fr": 2, "de": 1, "th": 3}
    outs = outputs_for(its, lambda i: int(i.group[1:]) < right[i.lang])
    summary, preds = score_outputs(its, outs, ScoringOptions(seen=["en", "de", "fr", "es"], bootstrap=300,
                                                             languages_source="test"))
    assert summary["languages"] == {"anchor": "en", "seen": ["en", "de", "fr"], "unseen": ["th"], "source": "test"}
    assert summary["headline_metric"] == "strict_accuracy" and summary["ci"]["metric"] == "strict_accuracy"
    assert summary["english"] == 1.0
    assert summary["non_english_mean"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["gap"] == pytest.approx(1 - 0.375)
    assert summary["unseen_mean"] == 0.75
    assert summary["all_languages_correct"] == 0.25 and summary["n_groups_all_languages"] == 4
    assert summary["per_language"]["fr"]["same_correctness_as_en"] == 0.5
    assert summary["per_language"]["fr"]["both_correct_with_en"] == 0.5
    assert summary["per_language"]["fr"]["same_answer_as_en"] == 0.5
    assert summary["per_language"]["th"]["answer_language_rate"] == 1.0
    # the wrong answers were the listed wrong value: every scorer agrees here
    assert summary["secondary"]["contains_accuracy"]["gap"] == pytest.approx(summary["gap"])
    assert summary["secondary"]["exact_match"]["unseen_mean"] == 0.75
    ci = summary["ci"]
    assert ci["english"] == [1.0, 1.0] and ci["unit"] == "group" and ci["resamples"] == 300
    lo, hi = ci["gap"]
    assert lo <= summary["gap"] <= hi
    assert set(ci["per_language"]) == {"en", "de", "fr", "th"}
    assert preds[0]["prediction"] == "10 months" and preds[0]["strict_correct"] is True
    assert preds[0]["question"] == "q?" and preds[0]["wrong_values"] == [["90 months"]]


def test_summary_headline_is_strict_and_secondary_is_contains():
    its = items(n_groups=4, langs=("en", "fr"))
    # French names the gold AND the wrong value in groups 0 and 1: contains 1.0, strict 0.5
    outs = [i.answers[0] + (" / " + i.candidates[0][0] if i.lang == "fr" and i.group in ("g0", "g1") else "")
            for i in its]
    summary, preds = score_outputs(its, outs, ScoringOptions(seen=["en", "fr"], bootstrap=100))
    assert summary["english"] == 1.0 and summary["non_english_mean"] == 0.5 and summary["gap"] == 0.5
    contains = summary["secondary"]["contains_accuracy"]
    assert contains["non_english_mean"] == 1.0 and contains["gap"] == 0.0
    assert summary["per_language"]["fr"]["names_wrong_value_rate"] == 0.5
    fr0 = next(p for p in preds if p["lang"] == "fr" and p["group"] == "g0")
    assert fr0["contains_answer"] and not fr0["strict_correct"] and fr0["named_wrong_values"] == ["90 mois"]


def test_summary_without_english_or_unseen():
    its = items(langs=("fr", "de"))
    summary, _ = score_outputs(its, outputs_for(its, lambda i: True), ScoringOptions(bootstrap=50))
    assert summary["english"] is None and summary["gap"] is None and summary["unseen_mean"] is None
    assert summary["non_english_mean"] == 1.0 and summary["ci"]["gap"] is None


def run(name, correct: dict, langs=("en", "fr")):
    seen = [l for l in langs]
    acc = {l: sum(v for (g, ll), v in correct.items() if ll == l) / sum(1 for (g, ll) in correct if ll == l)
           for l in langs}
    metrics = {"languages": {"anchor": "en", "seen": seen, "unseen": []}, "english": acc["en"],
               "non_english_mean": sum(acc[l] for l in langs if l != "en") / (len(langs) - 1),
               "data_fingerprint": "x", "model": name}
    metrics["gap"] = metrics["english"] - metrics["non_english_mean"]
    return Run(Path(name), metrics, correct)


def test_compare_counts_discordant_pairs_and_decides():
    n = 40
    a = {(f"g{g}", l): (g % 2 == 0) for g in range(n) for l in ("en", "fr")}
    b = dict(a)
    for g in range(n):  # B fixes every French error and keeps English
        b[(f"g{g}", "fr")] = True
    result = compare_runs(run("A", a), run("B", b), n_resamples=500)
    fr, en = result["per_language"]["fr"], result["per_language"]["en"]
    assert (fr["a_only_correct"], fr["b_only_correct"]) == (0, 20)
    assert fr["mcnemar_p"] == pytest.approx(2 * 0.5 ** 20)
    assert fr["diff"] == 0.5 and fr["ci"][0] > 0 and fr["verdict"] == BETTER
    assert en["diff"] == 0 and en["mcnemar_p"] == 1.0 and en["verdict"] == SAME
    # English stays at 0.5 and French goes to 1.0: the signed gap goes from 0 to -0.5
    assert result["headline"]["gap"]["diff"] == -0.5 and result["headline"]["gap"]["verdict"] == "gap decreased"
    reverse = compare_runs(run("B", b), run("A", a), n_resamples=500)
    assert reverse["per_language"]["fr"]["verdict"] == WORSE
    assert "fr" in format_table(result) and "better" in format_table(result)


def test_compare_needs_both_ci_and_mcnemar():
    # 5 discordant pairs, all in B's favour: the bootstrap interval excludes 0, but the exact
    # McNemar p = 2 / 2**5 = 0.0625 >= 0.05, so the verdict is "no significant change".
    a = {(f"g{g}", l): False for g in range(30) for l in ("en", "fr")}
    b = dict(a)
    for g in range(5):
        b[(f"g{g}", "fr")] = True
    fr = compare_runs(run("A", a), run("B", b), n_resamples=500)["per_language"]["fr"]
    assert fr["ci"][0] > 0 and fr["mcnemar_p"] == pytest.approx(0.0625) and fr["verdict"] == SAME


def test_compare_refuses_different_items():
    a = {("g1", "en"): True, ("g1", "fr"): True, ("g2", "en"): True}
    b = {("g1", "en"): True, ("g1", "fr"): True, ("g3", "en"): True}
    with pytest.raises(BcatError, match="different items.*g2/en.*g3/en"):
        check_same_items(run("A", a), run("B", b))
