"""Metric functions on hand-made predictions with known values."""

from __future__ import annotations

import pytest

from bcat.evaluation.metrics import (
    ItemScore,
    LanguageIdentifier,
    all_correct_share,
    char_ngrams,
    chrf_recall,
    consistency_with_anchor,
    han_only,
    per_language,
    score_item,
)


def test_char_ngrams_ignore_case_punctuation_and_spaces():
    assert char_ngrams("24 Mois.") == char_ngrams("24mois")
    assert sum(char_ngrams("abcdef").values()) == 4


def test_chrf_recall_known_values():
    assert chrf_recall("24 mois", ["24 mois"]) == 1.0
    # answer "24 mois" -> 24m 4mo moi ois; prediction "24 moi" has 3 of them
    assert chrf_recall("24 moi", ["24 mois"]) == pytest.approx(0.75)
    # max over accepted answers
    assert chrf_recall("two years", ["24 months", "two years"]) == 1.0
    # clipped counts: "aaaa" has "aaa" twice; prediction "aaa" has it once -> 1/2
    assert chrf_recall("aaa", ["aaaa"]) == pytest.approx(0.5)
    # digits of another script count as the same n-grams
    assert chrf_recall("२४ महीने", ["24 महीने"]) == 1.0
    # a one-character answer is its own gram
    assert chrf_recall("6", ["６"]) == 1.0 and chrf_recall("7", ["6"]) == 0.0
    # only the first line counts
    assert chrf_recall("no\n24 mois", ["24 mois"]) == 0.0


def _s(group, lang, correct, lang_ok=None):
    return ItemScore(group, lang, correct, float(correct), language_ok=lang_ok)


SCORES = [
    _s("g1", "en", True, True), _s("g1", "fr", True, True), _s("g1", "hi", False, False),
    _s("g2", "en", True, True), _s("g2", "fr", False, None), _s("g2", "hi", True, True),
    _s("g3", "en", False, True), _s("g3", "fr", False, False), _s("g3", "hi", False, True),
    _s("g4", "en", False, None), _s("g4", "fr", True, True),  # g4 has no Hindi
]


def test_consistency_with_english():
    c = consistency_with_anchor(SCORES)
    assert c["en"] is None
    assert c["fr"] == pytest.approx(2 / 4)   # (en, fr): g1 (T,T) g2 (T,F) g3 (F,F) g4 (F,T)
    assert c["hi"] == pytest.approx(2 / 3)   # (en, hi): g1 (T,F) g2 (T,T) g3 (F,F); g4 has no Hindi


def test_all_correct_share_uses_complete_groups_only():
    share, n = all_correct_share(SCORES, ["en", "fr", "hi"])
    assert (share, n) == (0.0, 3)
    share, n = all_correct_share(SCORES, ["en", "fr"])
    assert (share, n) == (pytest.approx(1 / 4), 4)


def test_per_language_aggregates():
    per = per_language(SCORES)
    assert list(per) == ["en", "fr", "hi"]
    assert per["en"]["accuracy"] == 0.5 and per["en"]["n"] == 4
    assert per["fr"]["accuracy"] == 0.5
    assert per["hi"]["accuracy"] == pytest.approx(1 / 3) and per["hi"]["n"] == 3
    assert per["fr"]["answer_language_rate"] == pytest.approx(2 / 3) and per["fr"]["n_language_judged"] == 3
    assert per["en"]["answer_language_rate"] == 1.0 and per["en"]["n_language_judged"] == 3


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
    assert s.correct and s.chrf3_recall == 1.0 and s.language_ok is True and s.detected_language == "fr"
    s = score_item("g", "fr", "XR-200", ["XR-200"], answer_neutral=True, identifier=identifier)
    assert s.correct and s.language_ok is None and s.detected_language is None
    s = score_item("g", "fr", "\n", ["24 mois"], identifier=identifier)
    assert not s.correct and s.language_ok is None
    s = score_item("g", "fr", "24 months", ["24 mois"], identifier=identifier)
    assert not s.correct and s.language_ok is False and s.detected_language == "en"
