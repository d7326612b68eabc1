"""Text normalisation and answer matching for multilingual QA.

One normal form serves every script we ship, so that a comparison between languages is a
comparison of the model, not of the matcher:

1. Unicode NFKC (full-width letters and digits become ASCII, compatibility forms fold);
2. casefold (``ß`` -> ``ss``, ``Ü`` -> ``ü``; diacritics are kept: ``garantía`` is not ``garantia``);
3. decimal digits of any script become ASCII (``०१२``, ``٠١٢``, ``๐๑๒`` -> ``012``);
4. Arabic tatweel and optional Arabic vowel marks (harakat) are dropped;
5. punctuation (Unicode category ``P*``) and whitespace are removed. Combining marks (Devanagari
   and Thai vowel signs) are kept: they are letters' parts, not decoration.

A prediction is correct when a normalised accepted answer occurs in the normalised FIRST LINE of
the prediction, and an answer that begins or ends with a digit is not glued to a further digit at
that end (``24`` does not match ``240`` nor ``124``).

>>> normalize("  La Garantía: 24 meses. ")
'lagarantía24meses'
>>> normalize("２４か月")
'24か月'
>>> is_correct("The warranty is 24 months.\\nQuestion: ...", ["24 months"])
True
>>> is_correct("240 months", ["24 months"])
False
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

_ARABIC_OPTIONAL = {chr(c) for c in range(0x064B, 0x0660)} | {"\u0670", "\u0640"}  # harakat, dagger alif, tatweel


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
    """The normal form used for matching and for character n-grams (see the module docstring)."""
    text = ascii_digits(unicodedata.normalize("NFKC", text).casefold())
    return "".join(
        ch for ch in text
        if not ch.isspace() and not unicodedata.category(ch).startswith("P") and ch not in _ARABIC_OPTIONAL
    )


def first_line(text: str) -> str:
    """The first non-empty line of a generation, stripped: what a reader takes as the answer.

    >>> first_line("\\n  24 months\\nQuestion: next")
    '24 months'
    """
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def contains_answer(normalized_prediction: str, normalized_answer: str) -> bool:
    """Whether the answer occurs in the prediction, both already normalised, with digit boundaries.

    An answer that starts (ends) with a digit must not be preceded (followed) by a digit.

    >>> contains_answer("garantie24mois", "24mois"), contains_answer("124mois", "24mois")
    (True, False)
    >>> contains_answer("anything", "")
    False
    """
    if not normalized_answer:
        return False
    start = normalized_prediction.find(normalized_answer)
    while start != -1:
        end = start + len(normalized_answer)
        glued_left = normalized_answer[0].isdigit() and start > 0 and normalized_prediction[start - 1].isdigit()
        glued_right = (normalized_answer[-1].isdigit() and end < len(normalized_prediction)
                       and normalized_prediction[end].isdigit())
        if not glued_left and not glued_right:
            return True
        start = normalized_prediction.find(normalized_answer, start + 1)
    return False


def is_correct(prediction: str, answers: Iterable[str]) -> bool:
    """Whether any accepted answer occurs in the normalised first line of ``prediction``."""
    pred = normalize(first_line(prediction))
    return any(contains_answer(pred, normalize(a)) for a in answers)


_LETTER = re.compile(r"[^\W\d_]")


def has_letters(text: str) -> bool:
    """Whether the text contains any letter (a prediction of digits only has no language).

    >>> has_letters("24"), has_letters("24 mois"), has_letters("२४")
    (False, True, False)
    """
    return bool(_LETTER.search(text))
