"""Metric functions on hand-made predictions with hand-computed values."""

from __future__ import annotations

import pytest

from bcat.evaluation.metrics import (
    ItemScore,
    LanguageIdentifier,
    all_correct_share,
    answer_id,
    chrf,
    consistency_with_anchor,
    han_only,
    per_language,
    score_item,
)


def _chrf_by_hand(hyp: str, ref: str, orders: int = 6) -> float:
    """chrF with beta = 1 written out: per order n with n-grams on both sides, clipped matches over
    hypothesis (precision) and reference (recall) n-grams; average P and R over those orders;
    F1 of the averages."""
    from collections import Counter

    precisions, recalls = [], []
    for n in range(1, orders + 1):
        h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        if h and r:
            match = sum(min(c, h[g]) for g, c in r.items())
            precisions.append(match / sum(h.values()))
            recalls.append(match / sum(r.values()))
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 2 * p * r / (p + r) if p + r else 0.0


def test_chrf_known_values():
    assert chrf("24 mois", ["24 mois"]) == 1.0
    assert chrf("", ["24 mois"]) == 0.0 and chrf("\n", ["24 mois"]) == 0.0
    # "lagarantiedure24mois" (20 chars) holds all of "24mois" (6): recall 1 at every order,
    # precision (7-n)/(21-n) for n = 1..6 -> mean P = 0.19225, F1 = 2P/(1+P) = 0.32251
    p = sum((7 - n) / (21 - n) for n in range(1, 7)) / 6
    assert chrf("La garantie dure 24 mois.", ["24 mois"]) == pytest.approx(2 * p / (1 + p), abs=1e-6)
    assert chrf("La garantie dure 24 mois.", ["24 mois"]) == pytest.approx(0.32251, abs=1e-5)
    # precision matters: the verbose answer scores below the terse one (recall-only chrF3 tied them)
    assert chrf("24 mois", ["24 mois"]) > chrf("24 mois, garantie complète incluse", ["24 mois"])
    # a truncated answer: "24moi" vs "24mois", orders 1..5 have n-grams on both sides
    assert chrf("24 moi", ["24 mois"]) == pytest.approx(_chrf_by_hand("24moi", "24mois"), abs=1e-6)
    # max over accepted answers; digits of another script are the same characters
    assert chrf("24", ["24 months", "24"]) == 1.0
    assert chrf("२४ महीने", ["24 महीने"]) == 1.0
    # only the first line counts
    assert chrf("xx\n24 mois", ["24 mois"]) == 0.0


@pytest.mark.parametrize("hyp, ref", [("24moi", "24mois"), ("kt2450", "kt2400"), ("12个月", "24个月"),
                                      ("abcabc", "abc"), ("garanția24deluni", "24deluni")])
def test_chrf_equals_the_formula(hyp, ref):
    assert chrf(hyp, [ref]) == pytest.approx(_chrf_by_hand(hyp, ref), abs=1e-6)


def _s(group, lang, correct, lang_ok=None, answer=None):
    return ItemScore(group, lang, correct, float(correct), language_ok=lang_ok,
                     answer_id=answer if answer is not None else ("answer" if correct else f"text:{group}{lang}"))


SCORES = [
    _s("g1", "en", True, True), _s("g1", "fr", True, True), _s("g1", "hi", False, False, "wrong:0"),
    _s("g2", "en", True, True), _s("g2", "fr", False, None), _s("g2", "hi", True, True),
    _s("g3", "en", False, True, "wrong:1"), _s("g3", "fr", False, False, "wrong:1"), _s("g3", "hi", False, True),
    _s("g4", "en", False, None), _s("g4", "fr", True, True),  # g4 has no Hindi
]


def test_agreement_with_english_in_three_senses():
    c = consistency_with_anchor(SCORES)
    # (en, fr): g1 (T,T) g2 (T,F) g3 (F,F, the same wrong value) g4 (F,T)
    assert c["both_correct_with_en"]["fr"] == pytest.approx(1 / 4)
    assert c["same_correctness_as_en"]["fr"] == pytest.approx(2 / 4)
    assert c["same_answer_as_en"]["fr"] == pytest.approx(2 / 4)  # g1 (both the answer), g3 (both wrong:1)
    # (en, hi): g1 (T,F) g2 (T,T) g3 (F,F, different wrong answers); g4 has no Hindi
    assert c["both_correct_with_en"]["hi"] == pytest.approx(1 / 3)
    assert c["same_correctness_as_en"]["hi"] == pytest.approx(2 / 3)
    assert c["same_answer_as_en"]["hi"] == pytest.approx(1 / 3)  # two wrong answers are not agreement
    assert all(c[name]["en"] is None for name in c)


def test_answer_id():
    assert answer_id("24 mois", True, ()) == "answer"
    assert answer_id("12 mois", False, (0,)) == "wrong:0"
    assert answer_id("12 or 24", True, (0,)) == "text:12or24"   # both: no single answer
    assert answer_id("12, 36", False, (0, 1)) == "text:12 36"
    assert answer_id("  ", False, ()) is None


def test_all_correct_share_uses_complete_groups_only():
    share, n = all_correct_share(SCORES, ["en", "fr", "hi"])
    assert (share, n) == (0.0, 3)
    share, n = all_correct_share(SCORES, ["en", "fr"])
    assert (share, n) == (pytest.approx(1 / 4), 4)


def test_per_language_aggregates():
    per = per_language(SCORES)
    assert list(per) == ["en", "fr", "hi"]
    assert per["en"]["strict_accuracy"] == 0.5 and per["en"]["n"] == 4
    assert per["fr"]["strict_accuracy"] == 0.5
    assert per["hi"]["strict_accuracy"] == pytest.approx(1 / 3) and per["hi"]["n"] == 3
    assert per["fr"]["answer_language_rate"] == pytest.approx(2 / 3) and per["fr"]["n_language_judged"] == 3
    assert per["en"]["answer_language_rate"] == 1.0 and per["en"]["n_language_judged"] == 3
    assert per["fr"]["same_correctness_as_en"] == 0.5 and per["en"]["same_answer_as_en"] is None
    assert per["en"]["n_with_candidates"] == 0


def test_per_language_scorers_on_real_predictions():
    answers, wrong = ["24 mois", "24"], [["12 mois", "12"], ["36 mois", "36"]]
    preds = ["24 mois", "La garantie est de 24 mois.", "12 mois ou 24 mois", "36 mois", ""]
    scores = [score_item(f"g{i}", "fr", p, answers, wrong) for i, p in enumerate(preds)]
    per = per_language(scores)["fr"]
    assert [s.strict for s in scores] == [True, True, False, False, False]
    assert per["strict_accuracy"] == pytest.approx(2 / 5)
    assert per["contains_accuracy"] == pytest.approx(3 / 5)
    assert per["exact_match"] == pytest.approx(1 / 5)
    assert per["names_wrong_value_rate"] == pytest.approx(2 / 5)
    expected_chrf = (1.0 + chrf(preds[1], answers) + chrf(preds[2], answers) + chrf(preds[3], answers) + 0) / 5
    assert per["chrf"] == pytest.approx(expected_chrf)
    assert per["n_with_candidates"] == 5
    assert scores[2].named_wrong == (0,) and scores[3].answer_id == "wrong:1"


@pytest.fixture(scope="module")
def identifier():
    return LanguageIdentifier(["en", "fr", "de", "zh", "ja"])


def test_language_identifier(identifier):
    assert identifier.identify("La garantie dure vingt-quatre mois") == "fr"
    assert identifier.identify("Die Garantie gilt vierundzwanzig Monate") == "de"
    assert identifier.identify("24") is None  # no letters: no language
    assert identifier.language_ok("24 mois", "fr") is True
    assert identifier.language_ok("24 months", "fr") is False
    assert identifier.language_ok("24か月", "ja") is True
    # Han-only text is ambiguous between Chinese and Japanese: accepted for both
    assert han_only("二十四个月") and identifier.language_ok("東京", "ja") and identifier.language_ok("東京", "zh")
    assert identifier.language_ok("24", "fr") is None
    assert identifier.language_ok("bonjour", "xx") is None


def test_identifier_with_one_language_falls_back():
    ident = LanguageIdentifier(["fr"], fallback=["en", "fr"])
    assert ident.codes == ("en", "fr")
    assert LanguageIdentifier(["fr"]).codes == ("fr",) and LanguageIdentifier(["fr"]).identify("bonjour") is None


def test_score_item_skips_language_id_for_neutral_and_empty(identifier):
    s = score_item("g", "fr", " 24 mois\nQuestion", ["24 mois"], identifier=identifier)
    assert s.strict and s.chrf == 1.0 and s.language_ok is True and s.detected_language == "fr"
    s = score_item("g", "fr", "XR-200", ["XR-200"], answer_neutral=True, identifier=identifier)
    assert s.strict and s.language_ok is None and s.detected_language is None
    s = score_item("g", "fr", "\n", ["24 mois"], identifier=identifier)
    assert not s.strict and s.language_ok is None and s.answer_id is None
    s = score_item("g", "fr", "24 months", ["24 mois"], identifier=identifier)
    assert not s.strict and s.language_ok is False and s.detected_language == "en"
