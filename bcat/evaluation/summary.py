"""The headline numbers of a RAG run, with bootstrap confidence intervals over groups.

Every headline number is STRICT accuracy (:data:`bcat.evaluation.metrics.HEADLINE_METRIC`: the
first line names an accepted answer and no other candidate value of the item):

* ``english``: strict accuracy on the anchor language (English unless the run says otherwise);
* ``non_english_mean``: the macro mean over the SEEN non-anchor languages;
* ``gap``: ``english - non_english_mean`` (the paper's headline: smaller is better);
* ``unseen_mean``: the macro mean over the evaluated languages that training did not see;
* ``all_languages_correct``: the share of groups answered correctly in every seen language.

Each comes with a 95% percentile interval from a bootstrap that resamples groups (all languages of
a drawn group go together), seeded. ``secondary`` gives the same point estimates under the other
scorers (``contains_accuracy``, ``exact_match``, ``chrf``), without intervals, to show how much the
scorer decides.

Which languages are seen comes from the run (:mod:`bcat.evaluation.scoring`): the training run's
``data.languages``, ``--seen``, or bcat's defaults, and ``languages.source`` says which.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from bcat.evaluation.metrics import HEADLINE_METRIC, ItemScore, all_correct_share, per_language
from bcat.evaluation.stats import (
    GroupMatrix,
    all_correct_rows,
    bootstrap_ci,
    gap_statistic,
    mean_of_columns,
)
from bcat.languages import ANCHOR

SECONDARY_METRICS = ("contains_accuracy", "exact_match", "chrf")
"""Scorers reported next to the headline, point estimates only."""


def order_languages(langs: Sequence[str], seen: Sequence[str], anchor: str = ANCHOR,
                    preferred: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Split languages into (seen, unseen), the anchor first (always seen), then in ``preferred``
    order, then by code.

    >>> order_languages(["th", "fr", "en", "de"], ["de", "fr", "es"], preferred=["en", "de", "fr", "th"])
    (['en', 'de', 'fr'], ['th'])
    """
    rank = {l: i for i, l in enumerate(preferred)}
    key = lambda l: (l != anchor, rank.get(l, len(rank)), l)  # noqa: E731
    ordered = sorted(set(langs), key=key)
    known = set(seen) | {anchor}
    return [l for l in ordered if l in known], [l for l in ordered if l not in known]


def _value(x) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def headline_numbers(per_lang: dict[str, dict], metric: str, anchor: str, seen: Sequence[str],
                     unseen: Sequence[str]) -> dict[str, Optional[float]]:
    """English, the seen non-English mean, the gap and the unseen mean of one per-language ``metric``.

    >>> per = {"en": {"m": 1.0}, "fr": {"m": 0.5}, "de": {"m": 0.25}, "th": {"m": 0.75}}
    >>> headline_numbers(per, "m", "en", ["en", "fr", "de"], ["th"])
    {'english': 1.0, 'non_english_mean': 0.375, 'gap': 0.625, 'unseen_mean': 0.75}
    """
    values = {l: per_lang[l][metric] for l in [*seen, *unseen] if per_lang[l][metric] is not None}
    english = values.get(anchor)
    others = [values[l] for l in seen if l != anchor and l in values]
    non_en = float(np.mean(others)) if others else None
    unseen_values = [values[l] for l in unseen if l in values]
    return {
        "english": _value(english),
        "non_english_mean": _value(non_en),
        "gap": _value(english - non_en) if english is not None and non_en is not None else None,
        "unseen_mean": _value(float(np.mean(unseen_values))) if unseen_values else None,
    }


def summarize(scores: Sequence[ItemScore], *, seen: Sequence[str], anchor: str = ANCHOR,
              languages_source: str = "given", preferred: Sequence[str] = (), n_resamples: int = 2000,
              seed: int = 0, level: float = 0.95) -> dict:
    """Per-language metrics, headline numbers (strict accuracy) and their intervals for one run.

    ``seen``: the languages training saw (the anchor always counts as seen); every other evaluated
    language is reported as unseen. ``languages_source`` says where ``seen`` came from.
    """
    seen_present, unseen_present = order_languages([s.lang for s in scores], seen, anchor, preferred)
    langs = seen_present + unseen_present
    per_lang = per_language(scores, anchor)
    matrix = GroupMatrix.from_items([(s.group, s.lang, s.strict) for s in scores], langs)
    head = headline_numbers(per_lang, HEADLINE_METRIC, anchor, seen_present, unseen_present)
    others = [l for l in seen_present if l != anchor]
    all_correct, n_complete = all_correct_share(scores, seen_present)

    def ci(stat):
        return bootstrap_ci(matrix.values, stat, n_resamples=n_resamples, seed=seed, level=level)

    cols = [matrix.col(l) for l in others]
    english_present = head["english"] is not None
    intervals = {
        "level": level, "resamples": n_resamples, "seed": seed, "unit": "group", "method": "percentile",
        "metric": HEADLINE_METRIC,
        "english": ci(lambda a: a[:, matrix.col(anchor)]) if english_present else None,
        "non_english_mean": ci(mean_of_columns(cols)) if others else None,
        "gap": ci(gap_statistic(matrix.col(anchor), cols)) if english_present and others else None,
        "unseen_mean": ci(mean_of_columns([matrix.col(l) for l in unseen_present])) if unseen_present else None,
        "all_languages_correct": None,
        "per_language": {l: ci(lambda a, c=matrix.col(l): a[:, c]) for l in langs},
    }
    if n_complete:
        rows = all_correct_rows(matrix.values[:, [matrix.col(l) for l in seen_present]])
        intervals["all_languages_correct"] = bootstrap_ci(rows, lambda a: a[:, 0], n_resamples=n_resamples,
                                                          seed=seed, level=level)
    return {
        "headline_metric": HEADLINE_METRIC,
        "languages": {"anchor": anchor, "seen": seen_present, "unseen": unseen_present, "source": languages_source},
        "per_language": {l: per_lang[l] for l in langs},
        **head,
        "all_languages_correct": _value(all_correct),
        "n_groups": len(matrix.groups),
        "n_groups_all_languages": n_complete,
        "ci": intervals,
        "secondary": {m: headline_numbers(per_lang, m, anchor, seen_present, unseen_present)
                      for m in SECONDARY_METRICS},
    }
