"""Text rules of the out-of-domain suite: last-word targets, word matching, last-number extraction.

Last word, languages written with spaces (en fr de es hi ar vi hu ro)
    The target is the last whitespace-separated token of the passage with its trailing punctuation
    removed (``"brotherhood."`` -> ``brotherhood``; Hindi ``"... अधिकार ।"`` -> ``अधिकार``). It must
    be a *word*: letters and combining marks, with ``'`` ``’`` ``-`` ``‐`` only inside, no digit,
    at least 2 characters. The prediction is the leading word of the continuation (after leading
    whitespace). They match when equal after :func:`bcat.data.normalize.normalize` (NFKC,
    casefold, Arabic vowel marks dropped, punctuation dropped).

Last word, languages written without spaces between words (ja zh th)
    There is no word boundary to read off the text (Thai spaces separate phrases, not words), so
    the target is the last ``N`` characters before the final punctuation, with ``N`` fixed per
    script to about one word: ``ja`` 3, ``zh`` 2, ``th`` 4 (:data:`NO_SPACE_CHARS`). A *character*
    is a base character with the combining marks that follow it (Thai tone and vowel marks ride on
    their consonant: ``ที่`` is one). A Thai vowel written before its consonant (``เ แ โ ใ ไ``) is
    not cut from it: when it stands just before the ``N`` characters it joins the target
    (``...สันติภาพในโลก`` -> ``ในโลก``, not ``นโลก``). The target must be letters only (no
    punctuation, space or digit). The cut can fall inside a word (``ja`` ``...しなければな|らない``):
    the rule approximates a word, it does not segment. The prediction is correct when the normalised continuation starts with the
    normalised target (a prefix match: the model may go on writing).

>>> lastword_split("They should act in a spirit of brotherhood.", "en")
('They should act in a spirit of', 'brotherhood')
>>> lastword_split("人人有权享有生命、自由和人身安全。", "zh")
('人人有权享有生命、自由和人身', '安全')
>>> lastword_split("ความยุติธรรม และสันติภาพในโลก", "th")
('ความยุติธรรม และสันติภาพ', 'ในโลก')
>>> lastword_correct(" Brotherhood, and", "brotherhood", "en"), lastword_correct("安全。", "安全", "zh")
(True, True)
>>> last_number("So 3 + 4 = ７. Answer: ١٢")
12
"""

from __future__ import annotations

import re
import unicodedata

from bcat.data.normalize import ascii_digits, normalize

NO_SPACE_CHARS: dict[str, int] = {"ja": 3, "zh": 2, "th": 4}
"""Languages without spaces between words -> how many characters form the last-word target."""

SENTENCE_END = frozenset(".!?।؟。！？")
"""Terminal punctuation: a last-word passage must end with one (Thai, which has none, excepted)."""

_THAI_LEADING_VOWELS = frozenset("เแโใไ")  # written before the consonant they follow in speech
_JOINERS = frozenset("'’-‐")  # inside a word only: l'homme, într‐o
_ZERO_WIDTH = frozenset("\u200c\u200d")  # ZWNJ/ZWJ are parts of Indic and Arabic words


def is_word_char(ch: str) -> bool:
    """Letters, combining marks and zero-width (non-)joiners; digits are not word characters here."""
    return unicodedata.category(ch)[0] in "LM" or ch in _ZERO_WIDTH


def leading_word(text: str) -> str:
    """The word at the very start of ``text`` (joiners allowed between word characters only).

    >>> leading_word("l'homme, et"), leading_word("într‐o zi"), leading_word("rights.Next"), leading_word('"x')
    ("l'homme", 'într‐o', 'rights', '')
    """
    i = 0
    while i < len(text):
        if is_word_char(text[i]) or (text[i] in _JOINERS and 0 < i < len(text) - 1 and is_word_char(text[i + 1])):
            i += 1
        else:
            break
    return text[:i]


def characters(text: str) -> list[str]:
    """Split into base characters, each with the combining marks that follow it.

    >>> characters("ที่นี่"), len(characters("自由"))
    (['ที่', 'นี่'], 2)
    """
    out: list[str] = []
    for ch in text:
        if out and unicodedata.category(ch).startswith("M"):
            out[-1] += ch
        else:
            out.append(ch)
    return out


def sentence_ends(paragraph: str, lang: str) -> list[int]:
    """Offsets just past each sentence-final punctuation mark of ``paragraph``.

    Languages with spaces need whitespace (or the end) after the mark, so ``3.5`` does not end a
    sentence; Japanese and Chinese put none after ``。``.

    >>> sentence_ends("One. Two three.", "en"), sentence_ends("一。二。", "zh")
    ([4, 15], [2, 4])
    """
    ends = []
    for i, ch in enumerate(paragraph):
        if ch not in SENTENCE_END:
            continue
        nxt = paragraph[i + 1] if i + 1 < len(paragraph) else " "
        if lang in NO_SPACE_CHARS or nxt.isspace():
            ends.append(i + 1)
    return ends


def _strip_tail(text: str) -> str:
    """``text`` without trailing whitespace, punctuation and symbols."""
    end = len(text)
    while end and unicodedata.category(text[end - 1])[0] in "PZS":
        end -= 1
    return text[:end]


def lastword_split(passage: str, lang: str) -> tuple[str, str] | None:
    """``(context, target)`` for a passage, or ``None`` when it has no valid target (module docstring)."""
    body = _strip_tail(passage)
    if lang in NO_SPACE_CHARS:
        chars = characters(body)
        n = NO_SPACE_CHARS[lang]
        if lang == "th" and len(chars) > n and chars[-n - 1] in _THAI_LEADING_VOWELS:
            n += 1
        target = "".join(chars[-n:])
        if len(chars) <= n or not all(is_word_char(c[0]) for c in chars[-n:]):
            return None
        return body[: len(body) - len(target)], target
    start = max(body.rfind(" "), body.rfind("\n"), body.rfind("\t")) + 1
    target = body[start:]
    if len(characters(target)) < 2 or leading_word(target) != target:
        return None
    return passage[:start].rstrip(), target


def lastword_correct(continuation: str, target: str, lang: str) -> bool:
    """Whether a greedy continuation of the context predicts ``target`` (module docstring)."""
    if lang in NO_SPACE_CHARS:
        want = normalize(target)
        return bool(want) and normalize(continuation).startswith(want)
    predicted = leading_word(continuation.lstrip())
    return bool(predicted) and normalize(predicted) == normalize(target)


# A number token: digits of any script (\d is Unicode-aware), optionally signed, grouped or with a decimal part.
NUMBER = re.compile(r"[-\u2212]?\d+(?:[.,]\d+)*")


def parse_number(token: str) -> int | float | None:
    """The value of a number as written, with digits of any script.

    One kind of separator followed by groups of exactly three digits is a thousands separator
    (``1,250`` and ``1.250`` are 1250); a single separator otherwise is a decimal point (``2,5``);
    with both kinds, the last one is the decimal point (``1.234,5``).

    >>> parse_number("１２"), parse_number("1,250"), parse_number("2,5"), parse_number("1.234,5"), parse_number("१२३")
    (12, 1250, 2.5, 1234.5, 123)
    """
    sign = -1 if token[:1] in "-\u2212" else 1
    token = ascii_digits(token.lstrip("-\u2212"))
    groups = re.split(r"[.,]", token)
    seps = re.findall(r"[.,]", token)
    if not seps:
        return sign * int(token)
    if len(set(seps)) == 1 and len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]):
        return sign * int("".join(groups))
    if len(seps) == 1:
        return sign * float(f"{groups[0]}.{groups[1]}")
    if seps[-1] != seps[0] and len(set(seps[:-1])) == 1 and all(len(g) == 3 for g in groups[1:-1]):
        return sign * float("".join(groups[:-1]) + "." + groups[-1])
    return None


def numbers(text: str) -> list[int | float]:
    """Every number written in ``text``, in order (tokens :func:`parse_number` cannot read are left out).

    >>> numbers("3 dozen eggs, 1,250 g and ४२"), numbers("none")
    ([3, 1250, 42], [])
    """
    return [value for value in map(parse_number, NUMBER.findall(text)) if value is not None]


def last_number(text: str) -> int | float | None:
    """The last number written in ``text`` (MGSM convention), or ``None``.

    >>> last_number("๑๒ ผล"), last_number("答案：２４个"), last_number("no number"), last_number("it is 17.")
    (12, 24, None, 17)
    """
    found = numbers(text)
    return found[-1] if found else None
