"""The headline numbers of a RAG run, with bootstrap confidence intervals over groups.

* ``english``: accuracy on the anchor language;
* ``non_english_mean``: the macro mean accuracy over the SEEN non-English languages;
* ``gap``: ``english - non_english_mean`` (the paper's headline: smaller is better);
* ``unseen_mean``: the macro mean over the languages declared unseen in training (``--unseen``);
* ``all_languages_correct``: the share of groups answered correctly in every seen language.

Each comes with a 95% percentile interval from a bootstrap that resamples groups (all languages of
a drawn group go together), seeded.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from bcat.evaluation.metrics import ItemScore, all_correct_share, per_language
from bcat.evaluation.stats import (
    GroupMatrix,
    all_correct_rows,
    bootstrap_ci,
    gap_statistic,
    mean_of_columns,
)
from bcat.languages import ANCHOR


def order_languages(langs: Sequence[str], unseen: Sequence[str], anchor: str = ANCHOR,
                    preferred: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Split languages into (seen, unseen), the anchor first, then in ``preferred`` order, then by code.

    >>> order_languages(["th", "fr", "en", "de"], ["th", "vi"], preferred=["en", "de", "fr", "th"])
    (['en', 'de', 'fr'], ['th'])
    """
    rank = {l: i for i, l in enumerate(preferred)}
    key = lambda l: (l != anchor, rank.get(l, len(rank)), l)  # noqa: E731
    ordered = sorted(set(langs), key=key)
    return [l for l in ordered if l not in unseen], [l for l in ordered if l in unseen]


def _value(x) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def summarize(scores: Sequence[ItemScore], *, unseen: Sequence[str] = (), anchor: str = ANCHOR,
              preferred: Sequence[str] = (), n_resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> dict:
    """Per-language metrics, headline numbers and their intervals for one run."""
    seen, unseen_present = order_languages([s.lang for s in scores], unseen, anchor, preferred)
    langs = seen + unseen_present
    per_lang = per_language(scores, anchor)
    matrix = GroupMatrix.from_items([(s.group, s.lang, s.correct) for s in scores], langs)
    acc = {l: per_lang[l]["accuracy"] for l in langs}
    others = [l for l in seen if l != anchor]
    english = acc.get(anchor)
    non_en = float(np.mean([acc[l] for l in others])) if others else None
    unseen_mean = float(np.mean([acc[l] for l in unseen_present])) if unseen_present else None
    all_correct, n_complete = all_correct_share(scores, seen)

    def ci(stat):
        return bootstrap_ci(matrix.values, stat, n_resamples=n_resamples, seed=seed, level=level)

    cols = [matrix.col(l) for l in others]
    intervals = {
        "level": level, "resamples": n_resamples, "seed": seed, "unit": "group", "method": "percentile",
        "english": ci(lambda a: a[:, matrix.col(anchor)]) if english is not None else None,
        "non_english_mean": ci(mean_of_columns(cols)) if others else None,
        "gap": ci(gap_statistic(matrix.col(anchor), cols)) if english is not None and others else None,
        "unseen_mean": ci(mean_of_columns([matrix.col(l) for l in unseen_present])) if unseen_present else None,
        "all_languages_correct": None,
        "per_language": {l: ci(lambda a, c=matrix.col(l): a[:, c]) for l in langs},
    }
    if n_complete:
        rows = all_correct_rows(matrix.values[:, [matrix.col(l) for l in seen]])
        intervals["all_languages_correct"] = bootstrap_ci(rows, lambda a: a[:, 0], n_resamples=n_resamples,
                                                          seed=seed, level=level)
    return {
        "languages": {"anchor": anchor, "seen": seen, "unseen": unseen_present},
        "per_language": {l: per_lang[l] for l in langs},
        "english": _value(english),
        "non_english_mean": _value(non_en),
        "gap": _value(english - non_en) if english is not None and non_en is not None else None,
        "unseen_mean": _value(unseen_mean),
        "all_languages_correct": _value(all_correct),
        "n_groups": len(matrix.groups),
        "n_groups_all_languages": n_complete,
        "ci": intervals,
    }
