"""Strict accuracy cannot be gamed on the bundled test split, in all eleven languages.

Answers that only LOOK right score 0: (a) echoing the question, (b) listing every candidate value,
(c) copying all passages onto one line, (d) the gold answer next to the distractor's. The gold
answer alone, dressed in each script's punctuation, quotes, native digits or its unit, scores 1.
The ``contains`` rule is reported next to it, to show what it lets through.

Every test runs twice: with the wrong values the records list, and with those fields removed
(plain question, passages, answers records), where the wrong values are derived from the passages
(:mod:`bcat.data.candidates`). The attacks are built from the listed values in both cases.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest

from bcat.data.rag import load_items
from bcat.evaluation.evaluate import resolve_data
from bcat.evaluation.metrics import per_language, score_item
from bcat.languages import LANGUAGES

FULL_STOP = {"ja": "。", "zh": "。", "hi": "।", "th": ""}
QUOTES = {"ja": ("「", "」"), "zh": ("“", "”"), "de": ("„", "“"), "fr": ("« ", " »"), "hu": ("„", "”"),
          "ro": ("„", "”"), "th": ("“", "”"), "hi": ("“", "”")}
NATIVE_DIGITS = {"hi": "०१२३४५६७८९", "th": "๐๑๒๓๔๕๖๗๘๙", "ja": "０１２３４５６７８９", "zh": "０１２３４５６７８９"}
LIST_JOIN = {"ja": "、", "zh": "、"}
WORD_OR = {"en": "or", "de": "oder", "es": "o", "fr": "ou", "hi": "या", "ja": "または", "zh": "或", "th": "หรือ",
           "vi": "hoặc", "hu": "vagy", "ro": "sau"}


WRONG_VALUE_FIELDS = ("distractor_answers", "distractor_answer", "unsupported_answer")


@pytest.fixture(scope="module")
def listed():
    return load_items(resolve_data("builtin"))


@pytest.fixture(scope="module", params=["listed", "derived"])
def scored(request, listed, tmp_path_factory):
    """The items whose wrong values score the answers: as listed, or derived from the passages."""
    if request.param == "listed":
        return listed
    plain = tmp_path_factory.mktemp("plain") / "test.jsonl"
    with resolve_data("builtin").open(encoding="utf-8") as f, plain.open("w", encoding="utf-8") as out:
        for line in f:
            rec = {k: v for k, v in json.loads(line).items() if k not in WRONG_VALUE_FIELDS}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    items = load_items(plain)
    assert [(i.group, i.lang) for i in items] == [(i.group, i.lang) for i in listed]
    return items


@pytest.fixture(scope="module")
def items(listed, scored):
    """What the attacks are built from (the listed values), paired with what scores them."""
    return list(zip(listed, scored))


def _rates(items, answer_of) -> dict[str, dict]:
    scores = [score_item(s.group, s.lang, answer_of(i), s.answers, s.candidates) for i, s in items]
    return per_language(scores)


def _assert_all_languages(per, metric, value):
    assert set(per) == set(LANGUAGES)
    bad = {lang: v[metric] for lang, v in per.items() if v[metric] != value}
    assert not bad, f"{metric} should be {value} in every language: {bad}"


def test_the_bundled_items_all_list_wrong_values(items):
    assert len(items) == 160 * len(LANGUAGES)
    assert all(len(i.candidates) >= 2 for i, _ in items)  # another passage's value and the unsupported one
    derived = [s.candidates_derived for _, s in items]
    assert all(derived) or not any(derived)


def test_a_echoing_the_question_scores_zero(items):
    per = _rates(items, lambda i: i.question)
    _assert_all_languages(per, "strict_accuracy", 0.0)
    compare = [i for i, _ in items if i.group.startswith("kb") and len(i.candidates[0]) == 1
               and sum(c[0] in i.question for c in i.candidates) == 1 and i.answers[0] in i.question]
    assert len(compare) >= 30 * len(LANGUAGES)  # the comparisons: the question names both options ...
    assert all(score_item(i.group, i.lang, i.question, i.answers, ()).contains for i in compare)  # ... old rule: 1


def test_b_listing_every_candidate_value_scores_zero(items):
    def every_value(i):
        values = [i.answers[0], *(c[0] for c in i.candidates)]
        random.Random(i.group).shuffle(values)
        return LIST_JOIN.get(i.lang, ", ").join(values)

    per = _rates(items, every_value)
    _assert_all_languages(per, "strict_accuracy", 0.0)
    _assert_all_languages(per, "contains_accuracy", 1.0)  # what the contains rule gives


def test_c_copying_all_passages_scores_zero(items):
    per = _rates(items, lambda i: " ".join(p.replace("\n", " ") for p in i.passages))
    _assert_all_languages(per, "strict_accuracy", 0.0)
    _assert_all_languages(per, "contains_accuracy", 1.0)


@pytest.mark.parametrize("template", ["{gold} / {wrong}", "{wrong} / {gold}", "{gold} {or} {wrong}",
                                      "{wrong}{gold}", "{gold}, {wrong}"])
def test_d_gold_plus_distractor_scores_zero(items, template):
    def answer(i):
        wrong = i.candidates[0][0]  # the first wrong value: a value another passage gives
        return template.format(gold=i.answers[0], wrong=wrong, **{"or": WORD_OR[i.lang]})

    per = _rates(items, answer)
    _assert_all_languages(per, "strict_accuracy", 0.0)


def _native(text: str, lang: str) -> str:
    digits = NATIVE_DIGITS.get(lang)
    return text if digits is None else "".join(digits[int(c)] if c.isascii() and c.isdigit() else c for c in text)


DRESSINGS = {
    "plain": lambda a, lang: a,
    "full stop": lambda a, lang: a + FULL_STOP.get(lang, "."),
    "quoted": lambda a, lang: QUOTES.get(lang, ('"', '"'))[0] + a + QUOTES.get(lang, ('"', '"'))[1],
    "native digits": lambda a, lang: _native(a, lang) + FULL_STOP.get(lang, "."),
    "spaced": lambda a, lang: "  " + a + " \n" + "Question: next",
}


@pytest.mark.parametrize("dressing", list(DRESSINGS))
def test_e_gold_alone_scores_one_in_every_script(items, dressing):
    per = _rates(items, lambda i: DRESSINGS[dressing](i.answers[0], i.lang))
    _assert_all_languages(per, "strict_accuracy", 1.0)


def test_e_every_accepted_form_alone_scores_one(items):
    # the bare number ("24") and the number with its unit ("24 Monate", "24か月", "24 เดือน") alike
    by_lang = defaultdict(list)
    for _, i in items:
        for form in i.answers:
            by_lang[i.lang].append(score_item(i.group, i.lang, form, i.answers, i.candidates).strict)
    assert set(by_lang) == set(LANGUAGES)
    assert all(all(v) for v in by_lang.values())
    with_unit = [i for i, _ in items if len(i.answers) == 2 and i.answers[1].isdigit() and i.group.startswith("kb")]
    assert {i.lang for i in with_unit} == set(LANGUAGES)
