"""Per-item and per-language QA metrics.

Per item: ``correct`` (normalised containment, see :mod:`bcat.data.normalize`),
``chrf3_recall`` (character 3-gram recall of the answer in the prediction, the BERGEN metric) and
``language_ok`` (whether the answer is written in the question's language, by offline language ID).

Per language: the means of those, and ``consistency_with_en``: the share of groups in which the
language agrees with English on correctness (both right or both wrong).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from bcat.data.normalize import first_line, has_letters, is_correct, normalize
from bcat.languages import ANCHOR

log = logging.getLogger(__name__)



def char_ngrams(text: str, n: int = 3) -> Counter:
    """Character n-grams of the normalised text; a text shorter than ``n`` is its own single gram.

    >>> sorted(char_ngrams("24 mois").items())
    [('24m', 1), ('4mo', 1), ('moi', 1), ('ois', 1)]
    >>> char_ngrams("６")
    Counter({'6': 1})
    """
    text = normalize(text)
    if not text:
        return Counter()
    if len(text) < n:
        return Counter([text])
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf_recall(prediction: str, answers: Iterable[str], n: int = 3) -> float:
    """Share of an answer's character n-grams found in the prediction (clipped counts), max over answers.

    Only the first line of the prediction counts, as for accuracy.

    >>> chrf_recall("24 mois", ["24 mois"])
    1.0
    >>> chrf_recall("24 moi", ["24 mois"])  # 3 of the 4 trigrams
    0.75
    >>> chrf_recall("", ["24 mois"])
    0.0
    """
    pred = char_ngrams(first_line(prediction), n)
    best = 0.0
    for answer in answers:
        ref = char_ngrams(answer, n)
        total = sum(ref.values())
        if total:
            best = max(best, sum(min(c, pred[g]) for g, c in ref.items()) / total)
    return best


# --- language identification ---------------------------------------------------------------------

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_OR_HANGUL = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af]")
_LATIN_OR_OTHER_LETTER = re.compile(r"[^\W\d_\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005\u3007]")


def han_only(text: str) -> bool:
    """Whether the letters of ``text`` are all Han characters (no kana): Chinese and Japanese look alike.

    >>> han_only("24个月"), han_only("24か月"), han_only("東京")
    (True, False, True)
    """
    return bool(_HAN.search(text)) and not _LATIN_OR_OTHER_LETTER.search(text) and not _KANA_OR_HANGUL.search(text)


@functools.lru_cache(maxsize=8)
def _detector(codes: tuple[str, ...]):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    return LanguageDetectorBuilder.from_languages(*langs).build()


def lingua_supports(code: str) -> bool:
    """Whether lingua has a model for this ISO 639-1 code."""
    from lingua import IsoCode639_1, Language

    iso = getattr(IsoCode639_1, code.upper(), None)
    if iso is None:
        return False
    try:
        Language.from_iso_code_639_1(iso)
    except (ValueError, KeyError):
        return False
    return True


class LanguageIdentifier:
    """Offline language ID with lingua, restricted to the given languages (fewer confusions).

    With fewer than two supported languages the restriction would decide nothing, so the
    identifier then uses ``fallback`` (all languages of the instruction table) instead.
    """

    def __init__(self, languages: Iterable[str], fallback: Iterable[str] = ()):
        codes = sorted({c for c in languages if lingua_supports(c)})
        if len(codes) < 2:
            codes = sorted(set(codes) | {c for c in fallback if lingua_supports(c)})
        self.codes = tuple(codes)

    def identify(self, text: str) -> Optional[str]:
        """The ISO 639-1 code of the text's language among ``self.codes``, or ``None`` if undecided."""
        if len(self.codes) < 2 or not has_letters(text):
            return None
        found = _detector(self.codes).detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found is not None else None

    def language_ok(self, text: str, lang: str) -> Optional[bool]:
        """Whether ``text`` is in ``lang``; ``None`` when it cannot be judged (no letters, unsupported).

        Text written in Han characters only counts as both Chinese and Japanese.
        """
        if lang not in self.codes or not has_letters(text):
            return None
        if lang in ("zh", "ja") and han_only(text):
            return True
        return self.identify(text) == lang


# --- items and aggregates ------------------------------------------------------------------------


@dataclass
class ItemScore:
    """The scores of one prediction."""

    group: str
    lang: str
    correct: bool
    chrf3_recall: float
    detected_language: Optional[str] = None
    language_ok: Optional[bool] = None
    extra: dict = field(default_factory=dict)


def score_item(group: str, lang: str, prediction: str, answers: Sequence[str], *, answer_neutral: bool = False,
               identifier: Optional[LanguageIdentifier] = None) -> ItemScore:
    """Score one prediction. Language ID is skipped for ``answer_neutral`` items and empty predictions."""
    line = first_line(prediction)
    score = ItemScore(group, lang, is_correct(line, answers), chrf_recall(line, answers))
    if identifier is not None and not answer_neutral and line:
        score.language_ok = identifier.language_ok(line, lang)
        if score.language_ok is not None:
            score.detected_language = lang if (score.language_ok and lang in ("zh", "ja") and han_only(line)) \
                else identifier.identify(line)
    return score


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def consistency_with_anchor(scores: Sequence[ItemScore], anchor: str = ANCHOR) -> dict[str, Optional[float]]:
    """Per language, the share of groups (that have both) where it agrees with ``anchor`` on correctness.

    >>> s = [ItemScore("g1", "en", True, 1.0), ItemScore("g1", "fr", True, 1.0),
    ...      ItemScore("g2", "en", True, 1.0), ItemScore("g2", "fr", False, 0.0),
    ...      ItemScore("g3", "en", False, 0.0), ItemScore("g3", "fr", False, 0.0)]
    >>> consistency_with_anchor(s)
    {'en': None, 'fr': 0.6666666666666666}
    """
    by_key = {(s.group, s.lang): s.correct for s in scores}
    langs = sorted({s.lang for s in scores}, key=lambda l: (l != anchor, l))
    out: dict[str, Optional[float]] = {}
    for lang in langs:
        if lang == anchor:
            out[lang] = None
            continue
        agree = [by_key[(g, lang)] == by_key[(g, anchor)] for (g, l) in by_key if l == lang and (g, anchor) in by_key]
        out[lang] = _mean([float(a) for a in agree])
    return out


def all_correct_share(scores: Sequence[ItemScore], languages: Sequence[str]) -> tuple[Optional[float], int]:
    """Share of groups correct in ALL of ``languages``, over the groups that have every one of them.

    Returns ``(share, number_of_groups)``.

    >>> s = [ItemScore("g1", "en", True, 1.0), ItemScore("g1", "fr", True, 1.0),
    ...      ItemScore("g2", "en", True, 1.0), ItemScore("g2", "fr", False, 0.0), ItemScore("g3", "en", True, 1.0)]
    >>> all_correct_share(s, ["en", "fr"])
    (0.5, 2)
    """
    by_group: dict[str, dict[str, bool]] = {}
    for s in scores:
        by_group.setdefault(s.group, {})[s.lang] = s.correct
    complete = [g for g, d in by_group.items() if all(l in d for l in languages)]
    if not complete or not languages:
        return None, 0
    return sum(all(by_group[g][l] for l in languages) for g in complete) / len(complete), len(complete)


def per_language(scores: Sequence[ItemScore], anchor: str = ANCHOR) -> dict[str, dict]:
    """Aggregates per language: accuracy, chrF3 recall, answer-language rate, consistency with English, n.

    ``answer_language_rate`` is over the items whose language could be judged (``n_language_judged``);
    ``None`` when there were none.
    """
    consistency = consistency_with_anchor(scores, anchor)
    out: dict[str, dict] = {}
    for lang in consistency:
        items = [s for s in scores if s.lang == lang]
        judged = [float(s.language_ok) for s in items if s.language_ok is not None]
        out[lang] = {
            "accuracy": _mean([float(s.correct) for s in items]),
            "chrf3_recall": _mean([s.chrf3_recall for s in items]),
            "answer_language_rate": _mean(judged),
            "consistency_with_en": consistency[lang],
            "n": len(items),
            "n_language_judged": len(judged),
        }
    return out
