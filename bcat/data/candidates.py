"""Wrong values derived from the passages, for items that list none.

Strict accuracy (:func:`bcat.data.normalize.judge`) needs an item's other candidate values: without
them an answer that copies every passage, or gives the gold value next to another passage's value,
names the gold answer and nothing "wrong", and scores 1. When a record lists no wrong values
(``distractor_answers``, ``distractor_answer``, ``unsupported_answer``), the values of the gold
answer's SHAPE that the passages give are taken as its wrong values:

* the gold answer has digits: every number in the passages (amounts, quantities, dates and times
  match through their numbers: ``CA$509`` names ``509``); when the gold is a code (letters glued
  to digits: ``BJ-9880``, ``CHF139``, ``第1条``) also every code;
* otherwise (a name): every capitalised word run not at a sentence start (``Swiss Franc``), and
  the filler of every clause: a passage is cut at punctuation into clauses, and each clause loses
  the longest prefix and suffix it shares with another clause of the same language in the file
  (``Phone support is provided in Arabic`` -> ``Arabic``; ``电话支持以阿拉伯语提供`` -> ``阿拉伯``),
  so that the template words around a value are dropped.

A derived value is never an accepted answer nor part of one (``24`` of ``24 months``), so the gold
answer alone still scores 1. Names are found
heuristically: a short, correct answer is safe, a verbose one may name a clause's words.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections import defaultdict
from typing import Iterable, Sequence

from bcat.data.normalize import ascii_digits, contains_answer, normalize

_CLAUSE_BREAK = re.compile(r"[.\u3002\u0964\u0965:\uff1a,\uff0c\u3001;\uff1b!?\uff01\uff1f()\uff08\uff09\u3010\u3011"
                           r"\[\]\u300c\u300d\u300e\u300f\"\u201c\u201d\u201e\u00ab\u00bb\u2013\u2014\n]+|\s{2,}"
                           r"|(?<=[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff])\s|\s(?=[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff])")
"""Where a passage is cut into clauses: punctuation of every script, and a single space next to a
letter of the scripts that write no spaces between words (Thai, Lao, Myanmar, Khmer use it to end
a phrase)."""
_CODE = re.compile(r"[^\W\d_]+[-\u2010\u2011]?\d[\w\-\u2010\u2011]*")
_NUMBER = re.compile(r"(?<!\d)\d+(?:[.,:/]\d+)*(?!\d)")
_WORD = re.compile(r"[^\W\d_][\w'\u2019\-]*")
_LEADING_VOWELS = "\u0e40\u0e41\u0e42\u0e43\u0e44\u0ec0\u0ec1\u0ec2\u0ec3\u0ec4"
"""Thai and Lao vowels written before the consonant they follow in speech: never cut after one."""
_SENTENCE_END = ".!?\u3002\uff01\uff1f\u0964"


def has_digits(text: str) -> bool:
    """Whether ``text`` has a decimal digit of any script."""
    return any(c.isdigit() for c in ascii_digits(text))


def is_code(text: str) -> bool:
    """Letters glued to digits: a model code, an amount with a currency code, ``第1条``.

    >>> is_code("BJ-9880"), is_code("CHF139"), is_code("775 g"), is_code("24")
    (True, True, False, False)
    """
    return _CODE.fullmatch(ascii_digits(text.strip())) is not None


def numbers(text: str, exclude: Sequence[str] = ()) -> list[str]:
    """The numbers of ``text`` (alone, in an amount or in a code), except those inside one of the
    codes ``exclude`` (the codes a question names: their digits are not an answer).

    >>> numbers("JC-8720: 770 g, CA$509, 2.5 kg, 12:30; JC-8600: 775 g", exclude=["JC-8600"])
    ['8720', '770', '509', '2.5', '12:30', '775']
    """
    text = ascii_digits(text)
    skip = [(m.start(), m.end()) for code in exclude for m in re.finditer(re.escape(code), text)]
    return [m.group(0) for m in _NUMBER.finditer(text)
            if not any(a <= m.start() and m.end() <= b for a, b in skip)]


def codes(text: str) -> list[str]:
    """Letters glued to digits (``BJ-9880``, ``CHF139``, ``第6条``).

    >>> codes("Product sheet: BJ-9440. Price: CHF509. 7 hours")
    ['BJ-9440', 'CHF509']
    """
    return _CODE.findall(ascii_digits(text))


def capitalised_runs(text: str) -> list[str]:
    """Runs of capitalised words that do not start a sentence (names in cased scripts).

    >>> capitalised_runs("Billing currency: Swiss Franc. Country of manufacture: India.")
    ['Swiss Franc', 'India']
    """
    out: list[str] = []
    run: list[re.Match] = []
    for m in _WORD.finditer(text):
        if has_digits(m.group(0)):  # a code, not a name
            if run:
                out.append(text[run[0].start():run[-1].end()])
                run = []
            continue
        before = text[:m.start()].rstrip()
        starts_sentence = not before or before[-1] in _SENTENCE_END
        glued = bool(run) and not text[run[-1].end():m.start()].strip()
        if m.group(0)[0].isupper() and not starts_sentence:
            if run and not glued:
                out.append(text[run[0].start():run[-1].end()])
                run = []
            run.append(m)
        elif run:
            out.append(text[run[0].start():run[-1].end()])
            run = []
    if run:
        out.append(text[run[0].start():run[-1].end()])
    return out


def clauses(text: str) -> list[str]:
    """``text`` cut at punctuation; only clauses with letters and no digits (names, not numbers)."""
    return [c.strip() for c in _CLAUSE_BREAK.split(text)
            if c.strip() and not has_digits(c) and any(ch.isalpha() for ch in c)]


TEMPLATE_SHARE = 4
"""A prefix (suffix) is template text when at least this many distinct clauses of the language
share it: values share a few characters by chance (``十月``, ``十一月``, ``十二月``), the words
around them are shared by many."""


def _template_lengths(strings: Sequence[str], share: int = TEMPLATE_SHARE) -> dict[str, int]:
    """For each string, the length of its longest prefix that at least ``share`` distinct strings
    of the list start with (0 when none)."""
    ordered = sorted(set(strings))

    def count(prefix: str) -> int:
        return bisect.bisect_left(ordered, prefix + "\U0010ffff") - bisect.bisect_left(ordered, prefix)

    out = {}
    for s in ordered:
        lo, hi = 0, len(s)  # count(s[:n]) shrinks as n grows: the largest n with count >= share
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if count(s[:mid]) >= share else (lo, mid - 1)
        out[s] = lo
    return out


def _boundary(text: str, n: int, forward: bool) -> int:
    """Move a cut at ``n`` to a word boundary when ``text`` has spaces, and never before a
    combining mark (a Thai or Devanagari vowel sign belongs to the letter before it)."""
    if " " in text and 0 < n < len(text) and text[n - 1] != " " and text[n] != " ":
        cut = text.find(" ", n) if forward else text.rfind(" ", 0, n)
        n = (cut if forward else cut + 1) if cut >= 0 else (len(text) if forward else 0)
    while 0 < n < len(text) and (unicodedata.category(text[n])[0] == "M" or text[n - 1] in _LEADING_VOWELS):
        n -= 1
    return n


def clause_fillers(all_clauses: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each clause without the longest prefix it shares with other clauses (:data:`TEMPLATE_SHARE`),
    without the longest such suffix, without both (its template words), and whole.

    >>> fillers = clause_fillers([f"support in {x}" for x in ("Arabic", "Greek", "Thai", "Hindi")])
    >>> fillers["support in Arabic"]
    ('Arabic', 'support in Arabic')
    """
    items = list(set(all_clauses))
    prefix = _template_lengths(items)
    suffix = {s[::-1]: n for s, n in _template_lengths([s[::-1] for s in items]).items()}
    out = {}
    for c in items:
        p = _boundary(c, prefix[c], forward=False)
        s = len(c) - _boundary(c, len(c) - suffix[c], forward=True)
        cores = [c[p:].strip(), c[:len(c) - s].strip(), c[p:len(c) - s].strip() if p + s < len(c) else ""]
        out[c] = tuple(dict.fromkeys(x for x in [*cores, c] if normalize(x)))
    return out


def derive_candidates(question: str, answers: Sequence[str], passages: Sequence[str], fillers: dict[str, str]
                      ) -> tuple[tuple[str, ...], ...]:
    """The wrong values of one item (see the module docstring): each a single form, in passage order.

    ``fillers``: :func:`clause_fillers` over the clauses of every item of the item's language.

    >>> derive_candidates("How heavy is JC-8600?", ["775 g", "775"], ["Weight: 770 g.", "JC-8600: 775 g."], {})
    (('770',),)
    >>> derive_candidates("Which lasts 7 hours?", ["BJ-9880"], ["BJ-9440: 5 hours.", "BJ-9880: 7 hours."], {})
    (('BJ-9440',), ('9440',), ('5',), ('7',))
    """
    gold = answers[0]
    text = "\n".join(passages)
    if has_digits(gold):
        named = codes(question)
        found = codes(text) + numbers(text) if is_code(gold) else numbers(text, exclude=named)
    else:
        found = capitalised_runs(text) + [f for c in clauses(text) for f in fillers.get(c, (c,))]
    accepted = [normalize(a) for a in answers]
    out: list[tuple[str, ...]] = []
    known: set[str] = set()
    for value in found:
        norm = normalize(value)
        part_of_gold = any(contains_answer(a, norm) for a in accepted)  # "24" of "24 months"
        if norm and not part_of_gold and norm not in known:
            known.add(norm)
            out.append((value,))
    return tuple(out)


def fillers_by_language(items: Iterable) -> dict[str, dict[str, str]]:
    """:func:`clause_fillers` per language over the passages of ``items`` (anything with ``lang``
    and ``passages``)."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    for item in items:
        for p in item.passages:
            by_lang[item.lang] += clauses(p)
    return {lang: clause_fillers(cs) for lang, cs in by_lang.items()}
