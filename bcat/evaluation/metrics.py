"""Per-item and per-language QA metrics.

Per item, from the FIRST LINE of the prediction (:func:`bcat.data.normalize.judge`):

* ``strict`` (**the headline**): the line names an accepted answer and no other candidate value of
  the item (a distractor's value, the unsupported value, a comparison's other option); echoing a
  question, listing every value or copying the passages scores 0;
* ``contains``: an accepted answer occurs in the line, whatever else it says (lenient: listing values passes);
* ``exact``: the whole normalised line is a normalised accepted answer;
* ``chrf``: chrF with precision and recall weighted equally (sacrebleu's chrF, character n-grams
  1-6, beta = 1) between the normalised line and the closest accepted answer, in [0, 1];
* ``language_ok``: whether the line is written in the question's language (offline language ID).

Why chrF (beta = 1) as the graded score, rather than token F1: it is the same measurement in
every script (character n-grams after one normal form), where token F1 has to switch to
character tokens for ja/zh/th and so is more lenient in exactly the languages whose gap we
measure; it gives partial credit for inflection (hu, ro, hi) that whole-word tokens score 0;
and with beta = 1 an extra character costs as much as a missing one, so a verbose answer does
not score higher than a terse one (a recall-weighted chrF such as chrF3 rewards length).

Per language: the means of those; agreement with the anchor (English) over the groups that have
both, in three senses: ``both_correct_with_en`` (both strictly correct), ``same_correctness_as_en``
(both right or both wrong), ``same_answer_as_en`` (the two lines give the same answer: the
accepted answer, the same wrong value, or equal normalised text).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from bcat.data.normalize import first_line, has_letters, judge, normalize
from bcat.languages import ANCHOR, primary_subtag

log = logging.getLogger(__name__)

CHRF_ORDER = 6
CHRF_BETA = 1


@functools.lru_cache(maxsize=1)
def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF(char_order=CHRF_ORDER, word_order=0, beta=CHRF_BETA)


def chrf(prediction: str, answers: Iterable[str]) -> float:
    """chrF (character 1-6-grams, beta = 1, sacrebleu) of the normalised first line against the
    closest normalised accepted answer, in [0, 1].

    >>> chrf("24 mois", ["24 mois"]), chrf("", ["24 mois"])
    (1.0, 0.0)
    >>> round(chrf("La garantie dure 24 mois.", ["24 mois"]), 3)  # every answer n-gram, but diluted
    0.323
    """
    line = normalize(first_line(prediction))
    refs = [normalize(a) for a in answers]
    if not line or not any(refs):
        return 0.0
    return _chrf_metric().sentence_score(line, refs).score / 100


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


LANGUAGE_ID_NOT_MEASURED = "not measured: lingua is not installed (pip install 'bcat[langid]')"
"""What ``metrics.json`` says of the answer language when bcat's ``langid`` extra is missing."""


def language_id_available() -> bool:
    """Whether lingua, the language identifier of bcat's ``langid`` extra (a 96 MB wheel), is installed."""
    try:
        import lingua  # noqa: F401
    except ImportError:
        return False
    return True


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
        codes = sorted({primary_subtag(c) for c in languages if lingua_supports(primary_subtag(c))})
        if len(codes) < 2:
            codes = sorted(set(codes) | {primary_subtag(c) for c in fallback if lingua_supports(primary_subtag(c))})
        self.codes = tuple(codes)

    def identify(self, text: str) -> Optional[str]:
        """The ISO 639-1 code of the text's language among ``self.codes``, or ``None`` if undecided."""
        if len(self.codes) < 2 or not has_letters(text):
            return None
        found = _detector(self.codes).detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found is not None else None

    def language_ok(self, text: str, lang: str) -> Optional[bool]:
        """Whether ``text`` is in ``lang``; ``None`` when it cannot be judged (no letters, unsupported).

        Text written in Han characters only counts as both Chinese and Japanese. A tag is judged by
        its language subtag (``pt-BR`` as ``pt``): language ID tells languages apart, not regions.
        """
        lang = primary_subtag(lang)
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
    strict: bool
    chrf: float
    contains: bool = False
    exact: bool = False
    named_wrong: tuple[int, ...] = ()
    """Indices of the item's wrong values the line names."""
    answer_id: Optional[str] = None
    """What the line answers, comparable across the languages of a group (:func:`answer_id`)."""
    has_candidates: bool = False
    """Whether the item had wrong values (listed or derived; otherwise ``strict`` equals ``contains``)."""
    candidates_derived: bool = False
    """Whether its wrong values were derived from the passages (:mod:`bcat.data.candidates`)."""
    detected_language: Optional[str] = None
    language_ok: Optional[bool] = None


def answer_id(line: str, names_answer: bool, named_wrong: Sequence[int]) -> Optional[str]:
    """The answer a first line gives, comparable across languages: ``"answer"`` (the accepted
    answer alone), ``"wrong:I"`` (the item's I-th wrong value alone; wrong values are listed in
    the same order in every language), else ``"text:"`` + the normalised line; ``None`` for an
    empty line.

    >>> answer_id("24 mois", True, ()), answer_id("12 Monate", False, (0,)), answer_id("KT-1", True, (2,))
    ('answer', 'wrong:0', 'text:kt1')
    """
    if names_answer and not named_wrong:
        return "answer"
    if not names_answer and len(named_wrong) == 1:
        return f"wrong:{named_wrong[0]}"
    norm = normalize(line)
    return f"text:{norm}" if norm else None


def score_item(group: str, lang: str, prediction: str, answers: Sequence[str],
               candidates: Sequence[Sequence[str]] = (), *, answer_neutral: bool = False,
               identifier: Optional[LanguageIdentifier] = None, candidates_derived: bool = False) -> ItemScore:
    """Score one prediction. Language ID is skipped for ``answer_neutral`` items and empty predictions."""
    line = first_line(prediction)
    j = judge(line, answers, candidates)
    score = ItemScore(group, lang, j.strict, chrf(line, answers), contains=j.contains, exact=j.exact,
                      named_wrong=j.named, answer_id=answer_id(line, j.names_answer, j.named),
                      has_candidates=bool(candidates), candidates_derived=candidates_derived and bool(candidates))
    if identifier is not None and not answer_neutral and line:
        score.language_ok = identifier.language_ok(line, lang)
        if score.language_ok is not None:
            han = score.language_ok and primary_subtag(lang) in ("zh", "ja") and han_only(line)
            score.detected_language = primary_subtag(lang) if han else identifier.identify(line)
    return score


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _with_anchor(scores: Sequence[ItemScore], anchor: str, agree) -> dict[str, Optional[float]]:
    """Per language, the share of groups (that have it and ``anchor``) where ``agree(item, anchor_item)``."""
    by_key = {(s.group, s.lang): s for s in scores}
    langs = sorted({s.lang for s in scores}, key=lambda l: (l != anchor, l))
    out: dict[str, Optional[float]] = {}
    for lang in langs:
        if lang == anchor:
            out[lang] = None
            continue
        pairs = [(s, by_key[(g, anchor)]) for (g, l), s in by_key.items() if l == lang and (g, anchor) in by_key]
        out[lang] = _mean([float(agree(s, a)) for s, a in pairs])
    return out


AGREEMENT = {
    "both_correct_with_en": lambda s, a: s.strict and a.strict,
    "same_correctness_as_en": lambda s, a: s.strict == a.strict,
    "same_answer_as_en": lambda s, a: s.answer_id is not None and s.answer_id == a.answer_id,
}
"""Agreement with the anchor, per group: what each ``*_en`` metric counts (the anchor is English by default)."""


def consistency_with_anchor(scores: Sequence[ItemScore], anchor: str = ANCHOR) -> dict[str, dict[str, Optional[float]]]:
    """Per agreement metric (:data:`AGREEMENT`), per language: the share of groups where it holds.

    >>> s = [ItemScore("g1", "en", True, 1.0), ItemScore("g1", "fr", True, 1.0),
    ...      ItemScore("g2", "en", True, 1.0), ItemScore("g2", "fr", False, 0.0),
    ...      ItemScore("g3", "en", False, 0.0), ItemScore("g3", "fr", False, 0.0)]
    >>> c = consistency_with_anchor(s)
    >>> c["both_correct_with_en"]["fr"], c["same_correctness_as_en"]["fr"], c["same_correctness_as_en"]["en"]
    (0.3333333333333333, 0.6666666666666666, None)
    """
    return {name: _with_anchor(scores, anchor, agree) for name, agree in AGREEMENT.items()}


def all_correct_share(scores: Sequence[ItemScore], languages: Sequence[str]) -> tuple[Optional[float], int]:
    """Share of groups strictly correct in ALL of ``languages``, over the groups that have every one of them.

    Returns ``(share, number_of_groups)``.

    >>> s = [ItemScore("g1", "en", True, 1.0), ItemScore("g1", "fr", True, 1.0),
    ...      ItemScore("g2", "en", True, 1.0), ItemScore("g2", "fr", False, 0.0), ItemScore("g3", "en", True, 1.0)]
    >>> all_correct_share(s, ["en", "fr"])
    (0.5, 2)
    """
    by_group: dict[str, dict[str, bool]] = {}
    for s in scores:
        by_group.setdefault(s.group, {})[s.lang] = s.strict
    complete = [g for g, d in by_group.items() if all(l in d for l in languages)]
    if not complete or not languages:
        return None, 0
    return sum(all(by_group[g][l] for l in languages) for g in complete) / len(complete), len(complete)


ITEM_METRICS = {
    "strict_accuracy": lambda s: float(s.strict),
    "contains_accuracy": lambda s: float(s.contains),
    "exact_match": lambda s: float(s.exact),
    "chrf": lambda s: s.chrf,
    "names_wrong_value_rate": lambda s: float(bool(s.named_wrong)),
}
"""Per-item values averaged per language. ``strict_accuracy`` is the headline."""
HEADLINE_METRIC = "strict_accuracy"


def per_language(scores: Sequence[ItemScore], anchor: str = ANCHOR) -> dict[str, dict]:
    """Aggregates per language: :data:`ITEM_METRICS`, answer-language rate, agreement with the anchor, counts.

    ``answer_language_rate`` is over the items whose language could be judged (``n_language_judged``);
    ``None`` when there were none. ``n_with_candidates``: items with wrong values; ``n_derived_candidates``:
    those whose wrong values were derived from the passages.
    """
    agreement = consistency_with_anchor(scores, anchor)
    out: dict[str, dict] = {}
    for lang in agreement["same_correctness_as_en"]:
        items = [s for s in scores if s.lang == lang]
        judged = [float(s.language_ok) for s in items if s.language_ok is not None]
        out[lang] = {name: _mean([f(s) for s in items]) for name, f in ITEM_METRICS.items()}
        out[lang].update({
            "answer_language_rate": _mean(judged),
            **{name: values[lang] for name, values in agreement.items()},
            "n": len(items),
            "n_language_judged": len(judged),
            "n_with_candidates": sum(s.has_candidates for s in items),
            "n_derived_candidates": sum(s.candidates_derived for s in items),
        })
    return out
