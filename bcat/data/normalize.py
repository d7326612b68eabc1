"""Text normalisation and answer matching for multilingual QA.

One normal form serves every script we ship, so that a comparison between languages is a
comparison of the model, not of the matcher:

1. Unicode NFKC (full-width letters and digits become ASCII, compatibility forms fold);
2. casefold (``ß`` -> ``ss``, ``Ü`` -> ``ü``; diacritics are kept: ``garantía`` is not ``garantia``);
3. decimal digits of any script become ASCII (``०१२``, ``٠١٢``, ``๐๑๒`` -> ``012``);
4. Arabic tatweel, optional Arabic vowel marks (harakat) and invisible format characters (Unicode
   category ``Cf``: zero-width space and joiners, soft hyphen, word joiner) are dropped;
5. punctuation (Unicode category ``P*``) and whitespace are removed, except between two digits:
   one decimal or grouping mark there (``.`` ``,`` ``'`` ``٫`` ``٬``, no space; not the full-width
   comma ``，``, a list separator) becomes ``.``, so ``"2.5"`` and ``"2,5"`` are one number, not
   ``25`` and not ``2`` then ``5`` (one or two zero decimals are dropped: ``409.00`` is ``409``);
   any other run becomes one space: ``"12, 24"`` is two numbers (``"12 24"``), not ``1224``. Combining marks
   (Devanagari and Thai vowel signs) are kept: they are letters' parts, not decoration.

An accepted answer OCCURS in a text when its normal form is a substring of the text's normal
form and an answer that begins or ends with a digit is not glued to a further digit at that end,
directly or across a decimal mark (``24`` does not match ``240``, ``124`` nor ``24.5``, but does
match ``"Model 3 24 months"``).

:func:`judge` scores a prediction's FIRST LINE against the accepted answers and the item's other
candidate values (see its docstring): ``contains`` (an accepted answer occurs), ``strict`` (an
accepted answer occurs and no other candidate does) and ``exact`` (the whole line is an accepted
answer).

>>> normalize("  La Garantía: 24 meses. ")
'lagarantía24meses'
>>> normalize("２４か月"), normalize("12, 24 Monate")
('24か月', '12 24monate')
>>> is_correct("The warranty is 24 months.\\nQuestion: ...", ["24 months"])
True
>>> is_correct("240 months", ["24 months"]), is_correct("Model 3 24 months", ["24 months"])
(False, True)
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

_ARABIC_OPTIONAL = {chr(c) for c in range(0x064B, 0x0660)} | {"\u0670", "\u0640"}  # harakat, dagger alif, tatweel
_NUMBER_MARKS = {".", ",", "'", "\u2019", "\u066b", "\u066c"}
"""Decimal and digit-grouping marks: one of them between two digits keeps the digits one number."""
_GLUE = "."
_ZERO_DECIMALS = re.compile(r"(\d)\.0{1,2}(?!\d)")
"""``409.00`` is ``409``; three zeros are not dropped: ``1.000`` is a thousand in German."""


def ascii_digits(text: str) -> str:
    """Map every decimal digit of any script to its ASCII digit; other characters are unchanged.

    >>> ascii_digits("वारंटी २४ महीने, ٣٦ شهرا, ๑๒ เดือน")
    'वारंटी 24 महीने, 36 شهرا, 12 เดือน'
    """
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        value = unicodedata.decimal(ch, None)
        if value is None:
            value = unicodedata.digit(ch, None)
        out.append(str(value) if value is not None else ch)
    return "".join(out)


def normalize(text: str) -> str:
    """The normal form used for matching and for character n-grams (see the module docstring).

    >>> normalize("Model 3: 24 months"), normalize("2,5 kg"), normalize("KT-2450"), normalize("12 - 24")
    ('model3 24months', '2.5kg', 'kt2450', '12 24')
    >>> normalize("BJ-\u200b9440")
    'bj9440'
    """
    # the full-width comma separates list items in Chinese and Japanese; NFKC would make it a decimal comma
    text = ascii_digits(unicodedata.normalize("NFKC", text.replace("\uff0c", "\u3001")).casefold())
    out: list[str] = []
    removed = ""  # the run of spaces/punctuation removed between out[-1] and the next kept char
    for ch in text:
        category = unicodedata.category(ch)
        if ch in _ARABIC_OPTIONAL or category == "Cf":
            continue
        if ch.isspace() or category.startswith("P"):
            removed += ch
            continue
        if removed and ch.isdigit() and out and out[-1].isdigit():
            out.append(_GLUE if removed in _NUMBER_MARKS else " ")  # one number, or two numbers
        out.append(ch)
        removed = ""
    return _ZERO_DECIMALS.sub(r"\1", "".join(out))


def first_line(text: str) -> str:
    """The first non-empty line of a generation, stripped: what a reader takes as the answer.

    Lines end at ``\\n`` or ``\\r``, where generation stops, not at the other separators of
    ``str.splitlines`` (``\\x1c`` and ``\\x85`` print as nothing, so the rest would pass unseen).

    >>> first_line("\\n  24 months\\nQuestion: next"), first_line("24\\x1c12")
    ('24 months', '24\\x1c12')
    """
    for line in re.split(r"[\r\n]", text):
        if line.strip():
            return line.strip()
    return ""


def answer_spans(normalized_text: str, normalized_answer: str) -> list[tuple[int, int]]:
    """Every ``(start, end)`` where the answer occurs in the text (both normalised), digits not glued.

    An answer that starts (ends) with a digit must not be preceded (followed) by a digit or a decimal
    mark (which :func:`normalize` keeps only between two digits).

    >>> answer_spans("12 24months", "24months"), answer_spans("124months", "24months")
    ([(3, 11)], [])
    >>> answer_spans("22.5hours", "22"), answer_spans("0.22hours", "22hours"), answer_spans("2.5kg", "2.5kg")
    ([], [], [(0, 5)])
    >>> answer_spans("anything", "")
    []
    """
    spans: list[tuple[int, int]] = []
    if not normalized_answer:
        return spans
    start = normalized_text.find(normalized_answer)
    while start != -1:
        end = start + len(normalized_answer)
        glued_left = normalized_answer[0].isdigit() and start > 0 and _number_part(normalized_text[start - 1])
        glued_right = (normalized_answer[-1].isdigit() and end < len(normalized_text)
                       and _number_part(normalized_text[end]))
        if not glued_left and not glued_right:
            spans.append((start, end))
        start = normalized_text.find(normalized_answer, start + 1)
    return spans


def _number_part(ch: str) -> bool:
    return ch.isdigit() or ch == _GLUE


def contains_answer(normalized_prediction: str, normalized_answer: str) -> bool:
    """Whether the answer occurs in the prediction, both already normalised, with digit boundaries.

    >>> contains_answer("garantie24mois", "24mois"), contains_answer("124mois", "24mois")
    (True, False)
    """
    return bool(answer_spans(normalized_prediction, normalized_answer))


def is_correct(prediction: str, answers: Iterable[str]) -> bool:
    """Whether any accepted answer occurs in the normalised first line of ``prediction`` (the
    ``contains`` rule; :func:`judge` gives the strict one)."""
    pred = normalize(first_line(prediction))
    return any(contains_answer(pred, normalize(a)) for a in answers)


@dataclass(frozen=True)
class Judgement:
    """How one prediction's first line relates to an item's values."""

    contains: bool
    """An accepted answer occurs in the line (whatever else it says)."""
    strict: bool
    """The line names an accepted answer and no other candidate value: the headline rule."""
    exact: bool
    """The whole normalised line is a normalised accepted answer."""
    names_answer: bool
    """An accepted answer is named (occurs outside any longer occurrence of a candidate)."""
    named: tuple[int, ...]
    """Indices of the other candidates the line names (after the containment rule of :func:`judge`)."""


def judge(prediction: str, answers: Sequence[str], candidates: Sequence[Sequence[str]] = ()) -> Judgement:
    """Judge the first line of ``prediction`` against the accepted ``answers`` and the item's other
    ``candidates`` (each a wrong value in one or more written forms: a distractor's value, an
    unsupported value, the other option of a comparison).

    A value is NAMED when one of its forms occurs (:func:`answer_spans`), except inside a longer
    occurrence of another value: Chinese ``十一月`` (November) does not name ``一月`` (January),
    and ``一月`` accepted does not make ``十一月`` correct. ``strict`` holds when the line names an
    accepted answer and no candidate; ``contains`` ignores candidates.

    >>> judge("24 months", ["24 months", "24"], [["12 months", "12"]])
    Judgement(contains=True, strict=True, exact=True, names_answer=True, named=())
    >>> judge("12 or 24 months", ["24 months", "24"], [["12 months", "12"]])
    Judgement(contains=True, strict=False, exact=False, names_answer=True, named=(0,))
    >>> judge("十一月", ["十一月"], [["一月"]]).strict, judge("十一月", ["一月"], [["十一月"]]).contains
    (True, True)
    >>> judge("十一月", ["一月"], [["十一月"]]).strict
    False
    """
    line = normalize(first_line(prediction))
    values = [[normalize(a) for a in answers], *[[normalize(f) for f in forms] for forms in candidates]]
    found = [(value, span) for value, forms in enumerate(values) for f in forms for span in answer_spans(line, f)]

    def shadowed(value: int, span: tuple[int, int]) -> bool:
        return any(other != value and o[0] <= span[0] and span[1] <= o[1] and o[1] - o[0] > span[1] - span[0]
                   for other, o in found)

    kept = {value for value, span in found if not shadowed(value, span)}
    named = tuple(sorted(v - 1 for v in kept if v > 0))
    return Judgement(contains=any(value == 0 for value, _ in found), strict=0 in kept and not named,
                     exact=bool(line) and line in values[0], names_answer=0 in kept, named=named)


_LETTER = re.compile(r"[^\W\d_]")


def has_letters(text: str) -> bool:
    """Whether the text contains any letter (a prediction of digits only has no language).

    >>> has_letters("24"), has_letters("24 mois"), has_letters("२४")
    (False, True, False)
    """
    return bool(_LETTER.search(text))
