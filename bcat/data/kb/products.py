"""Part A: support knowledge-base items about products (warranty, battery, weight, price,
currency, country of manufacture, support language, delivery day, launch month).

An item is a set of 3-5 products of one family ("KT-2400", "KT-2450", ...) that share the same
facts with different values; each product is one passage. Four kinds of question:

- ``number``: a quantity or price of one product ("How long is the warranty of KT-2450?");
- ``name``: a CLDR name of one product (country, language, currency, weekday, month);
- ``which_model``: the product that has a given value ("Which model weighs 245 g?");
- ``compare``: which of two products has the larger/smaller value ("Which of A and B is lighter?").

Distractor values of the asked fact are drawn close to the gold value (similar numbers), every
product has the same facts, and product codes differ in a few digits: the model has to read which
passage is which. The facts are drawn once per item and rendered in every language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Union

from bcat.data.kb.checks import record_problems
from bcat.data.kb.templates import (
    ATTRIBUTES,
    NAME_ATTRIBUTES,
    NUMBER_ATTRIBUTES,
    load_templates,
)
from bcat.data.kb.values import render_value
from bcat.languages import ANCHOR, LANGUAGES

KINDS = ("number", "name", "which_model", "compare")
KIND_WEIGHTS = {"number": 0.25, "name": 0.35, "which_model": 0.15, "compare": 0.25}
"""Share of each kind among the product items of a split."""

# Product codes start with letters read with a consonant in Hungarian (so the article is always
# "a", never "az") and carry four digits (so no 2-3 digit answer is ever "found" inside a code).
CODE_LETTERS = "BCDGHJKPTVZ"

# Value pools. Countries, languages and currencies are chosen so that no name contains another
# in any of the eleven languages (no France next to French: ja フランス / フランス語; no GBP,
# Hungarian "angol font" contains "angol").
POOLS: dict[str, list] = {
    "warranty": [6, 12, 18, 24, 30, 36, 48, 60],
    "battery": [4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 22, 24, 30, 36, 40, 48],
    "weight": list(range(120, 1000, 5)),
    "price": list(range(19, 1000, 10)),
    "currency": ["EUR", "USD", "CHF", "CAD", "AUD"],
    "country": ["DE", "IT", "PL", "CZ", "SE", "FI", "VN", "MX", "AT", "PT", "TR", "IN", "DK", "NO", "HU",
                "RO", "MY", "ID", "EG", "MA", "IE", "BE"],
    "language": ["en", "fr", "es", "ru", "ar", "ko", "zh", "el", "uk"],
    "delivery_day": list(range(7)),
    "launch_month": list(range(1, 13)),
}
LARGER_WINS = {"warranty": True, "battery": True, "weight": False, "price": False}
"""For comparisons: is the answer the product with the larger value ("longer", not "lighter")."""

MAX_ATTEMPTS = 500


@dataclass
class Product:
    """One product: its code, its currency and its facts (attribute -> raw value)."""

    code: str
    currency: str
    values: dict[str, Union[int, str]] = field(default_factory=dict)


@dataclass
class Spec:
    """Everything drawn for one item, before it is rendered in any language."""

    kind: str
    attribute: str
    products: list[Product]  # in passage order
    facts: list[list[str]]  # per passage: the attributes in the order they are written
    headers: list[int]  # per passage: header paraphrase
    phrasing: list[dict[str, int]]  # per passage: attribute -> fact paraphrase
    question: int  # question paraphrase
    gold: int  # passage index of the answer
    wrong: int  # passage index of the grounding-error answer (a distractor, or the loser of a comparison)
    unsupported: Union[int, str]  # a value (or code) in no passage
    pair: tuple[int, int] = (0, 0)  # compare: passage indices in question order ({a}, {b})


def _similar_values(rng: random.Random, pool: list, n: int) -> list:
    """``n`` distinct values from a narrow window of the pool, so distractors resemble the gold."""
    width = min(len(pool), max(n + 2, 2 * n))
    start = rng.randrange(len(pool) - width + 1)
    return rng.sample(pool[start:start + width], n)


def _unused_value(rng: random.Random, pool: list, used: list):
    """A value of the pool that no product has; for numbers, one of the closest to the used ones."""
    unused = [v for v in pool if v not in used]
    if isinstance(pool[0], int) and len(pool) > 12:
        low, high = min(used), max(used)
        unused.sort(key=lambda v: max(low - v, v - high, 0))
        unused = unused[:3]  # plausible: inside or right next to the range of the shown values
    return rng.choice(unused)


def _codes(rng: random.Random, n: int) -> tuple[list[str], str]:
    """``n`` product codes of one family and one more unused code of it (for hallucinations)."""
    prefix = "".join(rng.sample(CODE_LETTERS, 2))
    thousands = rng.randrange(1, 10) * 1000
    numbers = rng.sample(range(thousands, thousands + 1000, 10), n + 1)
    codes = [f"{prefix}-{x}" for x in numbers]
    return codes[:n], codes[n]


def attributes_of(kind: str) -> tuple[str, ...]:
    """The attributes a question of this kind can ask about."""
    return NAME_ATTRIBUTES if kind == "name" else NUMBER_ATTRIBUTES


def draw_spec(kind: str, attribute: str, rng: random.Random) -> Spec:
    """Draw the facts, the phrasing and the passage order of one item about ``attribute``."""
    pool = POOLS[attribute]
    n = min(rng.choice((3, 4, 5)), len(pool) - 1)  # leave one value unused for the hallucination
    n_facts = rng.choice((3, 4))
    others = [a for a in ATTRIBUTES if a != attribute]
    shown = [attribute, *rng.sample(others, n_facts - 1)]
    codes, spare_code = _codes(rng, n)
    asked = rng.sample(pool, n) if attribute in NAME_ATTRIBUTES else _similar_values(rng, pool, n)
    one_currency = rng.choice(POOLS["currency"])
    products = []
    for i in range(n):
        if attribute == "currency":
            currency = asked[i]
        elif kind == "compare" and attribute == "price":
            currency = one_currency  # prices are only comparable in one currency
        else:
            currency = rng.choice(POOLS["currency"])
        values = {a: (currency if a == "currency" else rng.choice(POOLS[a])) for a in shown}
        values[attribute] = asked[i]
        products.append(Product(codes[i], currency, values))

    # Product 0 is the gold (for a comparison: the winner of products 0 and 1); product 1 the wrong one.
    if kind == "compare":
        a, b = products[0], products[1]
        a_wins = (a.values[attribute] > b.values[attribute]) == LARGER_WINS[attribute]
        if not a_wins:
            products[0], products[1] = b, a
    unsupported = spare_code if kind in ("which_model", "compare") else _unused_value(rng, pool, asked)

    order = list(range(n))
    rng.shuffle(order)
    products = [products[i] for i in order]
    gold, wrong = order.index(0), order.index(1)
    facts = []
    for _ in range(n):
        written = list(shown)
        rng.shuffle(written)
        facts.append(written)
    pair = (gold, wrong) if rng.random() < 0.5 else (wrong, gold)
    return Spec(
        kind=kind, attribute=attribute, products=products, facts=facts,
        headers=[rng.randrange(1000) for _ in range(n)],
        phrasing=[{a: rng.randrange(1000) for a in shown} for _ in range(n)],
        question=rng.randrange(1000), gold=gold, wrong=wrong, unsupported=unsupported, pair=pair,
    )


def _pick(lines: tuple[str, ...], index: int) -> str:
    # One random index per slot, shared by all languages: each language has its own paraphrase list.
    return lines[index % len(lines)]


def _value(lang: str, attribute: str, value, currency: str):
    return render_value(lang, attribute, value, currency=currency)


def render_passage(spec: Spec, i: int, lang: str) -> str:
    """Passage ``i`` of the item in ``lang``: a header naming the product, then its facts."""
    t = load_templates(lang)
    p = spec.products[i]
    parts = [_pick(t.headers, spec.headers[i]).format(model=p.code)]
    for attribute in spec.facts[i]:
        value = _value(lang, attribute, p.values[attribute], p.currency).text
        parts.append(_pick(t.facts[attribute], spec.phrasing[i][attribute]).format(value=value))
    return t.joiner.join(parts)


def _question(spec: Spec, lang: str) -> str:
    t = load_templates(lang)
    gold = spec.products[spec.gold]
    if spec.kind in ("number", "name"):
        return _pick(t.questions[spec.attribute], spec.question).format(model=gold.code)
    if spec.kind == "which_model":
        value = _value(lang, spec.attribute, gold.values[spec.attribute], gold.currency).text
        return _pick(t.which_model[spec.attribute], spec.question).format(value=value, n=gold.values[spec.attribute])
    a, b = (spec.products[i].code for i in spec.pair)
    return _pick(t.compare[spec.attribute], spec.question).format(a=a, b=b)


def _answers(spec: Spec, lang: str) -> tuple[tuple[str, ...], str, str]:
    """(accepted answers, grounding-error answer, unsupported answer) in ``lang``."""
    gold, wrong = spec.products[spec.gold], spec.products[spec.wrong]
    if spec.kind in ("which_model", "compare"):
        return (gold.code,), wrong.code, str(spec.unsupported)
    attr = spec.attribute
    return (
        _value(lang, attr, gold.values[attr], gold.currency).answers,
        _value(lang, attr, wrong.values[attr], wrong.currency).text,
        _value(lang, attr, spec.unsupported, gold.currency).text,  # an unseen price in the gold's currency
    )


def _wrong_values(spec: Spec, lang: str) -> list[list[str]]:
    """The asked attribute's value of every OTHER product, in passage order, each in its accepted forms
    (a comparison's other option and every other model code, for the kinds answered with a code)."""
    out = []
    for i, product in enumerate(spec.products):
        if i == spec.gold:
            continue
        if spec.kind in ("which_model", "compare"):
            out.append([product.code])
        else:
            out.append(list(_value(lang, spec.attribute, product.values[spec.attribute], product.currency).answers))
    return out


def render_record(spec: Spec, group: str, lang: str) -> dict:
    """The QA record of the item in one language."""
    answers, wrong, unsupported = _answers(spec, lang)
    english = _answers(spec, ANCHOR)[0][0]
    evidence = sorted({spec.gold, spec.wrong}) if spec.kind == "compare" else [spec.gold]
    return {
        "group": group,
        "lang": lang,
        "source": "kb",
        "kind": spec.kind,
        "attribute": spec.attribute,
        "question": _question(spec, lang),
        "passages": [render_passage(spec, i, lang) for i in range(len(spec.products))],
        "gold_index": spec.gold,
        "evidence": evidence,
        "answers": list(answers),
        "answer_neutral": spec.kind != "name",
        "answer_en": english,
        "distractor_answer": wrong,
        "distractor_answers": _wrong_values(spec, lang),
        "unsupported_answer": unsupported,
    }


def product_item(group: str, kind: str, attribute: str, rng: random.Random, langs=LANGUAGES) -> list[dict]:
    """One item in every language of ``langs``, redrawn until every record passes the checks.

    Only values, facts and phrasing are redrawn, never the kind or the attribute, so that the
    checks cannot skew the mix of questions.
    """
    if kind not in KINDS or attribute not in attributes_of(kind):
        raise ValueError(f"no {kind!r} question about {attribute!r}")
    for _ in range(MAX_ATTEMPTS):
        spec = draw_spec(kind, attribute, rng)
        records = [render_record(spec, group, lang) for lang in langs]
        if not any(record_problems(r) for r in records):
            return records
    raise RuntimeError(f"{group}: no valid {kind} item in {MAX_ATTEMPTS} draws")
