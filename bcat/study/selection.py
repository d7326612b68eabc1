"""The selection on dev: which candidate arm's setting the arms ``from_selection`` take.

Rule: candidates whose dev English is at most ``english_tolerance`` below the reference are eligible
(the reference: the baseline arm's dev English, or without a baseline the best dev English among the
candidates); the eligible one with the highest dev ``metric`` wins, ties to the earlier candidate. If
none is eligible, the highest ``metric`` wins and ``english_constraint_met`` is false (the report
says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from bcat.study.grid import SelectionSpec


def selection_file(results: Path, sel: SelectionSpec) -> Path:
    """Where a selection's pick is written: ``selection.json``, or ``selection-NAME.json`` when named."""
    return results / (f"selection-{sel.name}.json" if sel.name else "selection.json")


def recorded_pick(results: Path, sel: SelectionSpec) -> Optional[dict]:
    """The pick written for ``sel``, if it was made by ``sel`` as the study file states it now (the same
    candidates, baseline, metric and tolerance); ``None`` when there is none, or when the grid has changed
    since (a candidate added, say): that pick waits for ``bcat study`` to make it again."""
    path = selection_file(results, sel)
    if not path.is_file():
        return None
    out = json.loads(path.read_text(encoding="utf-8"))
    same = (list(out["candidates"]) == list(sel.candidates) and (out["reference"]["arm"] or "") == sel.baseline
            and out["metric"] == sel.metric and out["english_tolerance"] == sel.english_tolerance)
    return out if same else None


def pick(sel: SelectionSpec, dev: dict[str, dict], runs: dict[str, str]) -> dict:
    """The pick of ``sel`` from the dev summaries of its arms' first seeds (``dev[arm]``: ``english`` and
    the metric; ``runs[arm]``: the run's name), as written to :func:`selection_file`.

    >>> sel = SelectionSpec(name="lr", candidates=["a", "b"], english_tolerance=0.01)
    >>> out = pick(sel, {"a": {"english": 0.60, "non_english_mean": 0.5}, "b": {"english": 0.58, "non_english_mean": 0.6}},
    ...            {"a": "a-s0", "b": "b-s0"})
    >>> out["selected"], out["candidates"]["b"]["eligible"]
    ('a', False)
    """
    if sel.baseline:
        reference_en, reference = dev[sel.baseline]["english"], f"{sel.baseline}'s"
    else:
        reference_en, reference = max(dev[a]["english"] for a in sel.candidates), "the best candidate's"
    table = {}
    for arm in sel.candidates:
        d = dev[arm]
        table[arm] = {"run": runs[arm], sel.metric: d[sel.metric], "english": d["english"],
                      "english_vs_reference": d["english"] - reference_en,
                      "eligible": d["english"] >= reference_en - sel.english_tolerance - 1e-12}
    eligible = [a for a in sel.candidates if table[a]["eligible"]]
    pool = eligible or list(sel.candidates)
    best = max(pool, key=lambda a: (table[a][sel.metric], -sel.candidates.index(a)))
    return {"name": sel.name, "split": "dev", "metric": sel.metric, "english_tolerance": sel.english_tolerance,
            "reference": ({"arm": sel.baseline, "run": runs[sel.baseline], "english": reference_en,
                           sel.metric: dev[sel.baseline][sel.metric]} if sel.baseline
                          else {"arm": None, "english": reference_en}),
            "candidates": table, "selected": best, "english_constraint_met": bool(eligible),
            "rule": (f"highest dev {sel.metric} among the candidates whose dev English is at most "
                     f"{sel.english_tolerance:g} below {reference}; ties: the earlier candidate")}
