"""The selection on dev: which candidate arm's setting the arms ``from_selection`` take.

Rule: candidates whose dev English is at most ``english_tolerance`` below the reference are eligible
(the reference: the baseline arm's dev English, or without a baseline the best dev English among the
candidates); the eligible one with the highest dev ``metric`` wins, ties to the earlier candidate. If
none is eligible, the highest ``metric`` wins and ``english_constraint_met`` is false (the report
says so). A pick at an end of the grid its candidates span (:func:`grid_edge`: the largest learning rate
tried, say) does not show that the best value was tried; by default (``at_edge: stop``) the arms from it
wait until a candidate beyond it is added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

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


def grid_edge(sel: SelectionSpec, settings: dict[str, dict[str, Any]], selected: str) -> Optional[dict]:
    """Where ``selected`` sits at an end of the grid: when at least three candidates differ in exactly one
    setting (``settings[arm]``: each candidate's config as ``{dotted key: value}``), that setting is a
    number, and ``selected`` has its smallest or largest value. ``None`` otherwise (the pick lies inside
    the grid, or the candidates are not a one-number sweep).

    >>> sel = SelectionSpec(candidates=["lr1", "lr2", "lr4"])
    >>> settings = {f"lr{i}": {"training.learning_rate": i * 1e-4, "batch.mode": "grouped"} for i in (1, 2, 4)}
    >>> grid_edge(sel, settings, "lr4")
    {'key': 'training.learning_rate', 'value': 0.0004, 'side': 'largest'}
    >>> grid_edge(sel, settings, "lr2") is None
    True
    """
    varying = [k for k in settings[selected] if len({repr(settings[a][k]) for a in sel.candidates}) > 1]
    if len(sel.candidates) < 3 or len(varying) != 1:
        return None
    key = varying[0]
    values = [settings[a][key] for a in sel.candidates]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    value = settings[selected][key]
    side = "largest" if value == max(values) else "smallest" if value == min(values) else None
    return {"key": key, "value": value, "side": side} if side else None


def holds(sel: SelectionSpec, out: dict) -> bool:
    """Whether the arms from ``sel`` may take its pick ``out``: not at an end of the grid, or ``at_edge: go_on``."""
    return not out.get("at_edge") or sel.at_edge == "go_on"


def edge_note(sel: SelectionSpec, out: dict) -> str:
    """What a pick at an end of the grid means, for the log and the report; empty inside the grid."""
    edge = out.get("at_edge")
    if not edge:
        return ""
    note = (f"{out['selected']} has the {edge['side']} {edge['key']} the candidates try ({edge['value']:g}), "
            "so a better value may lie beyond the grid: ")
    return note + ("going on with it (at_edge: go_on)." if sel.at_edge == "go_on" else
                   "the arms from this selection wait until a candidate beyond it is added "
                   "(or the selection says at_edge: go_on).")


def pick(sel: SelectionSpec, dev: dict[str, dict], runs: dict[str, str], settings: dict[str, dict[str, Any]]) -> dict:
    """The pick of ``sel`` from the dev summaries of its arms' first seeds (``dev[arm]``: ``english`` and
    the metric; ``runs[arm]``: the run's name; ``settings[arm]``: the arm's config for :func:`grid_edge`),
    as written to :func:`selection_file`.

    >>> sel = SelectionSpec(name="lr", candidates=["a", "b"], english_tolerance=0.01)
    >>> out = pick(sel, {"a": {"english": 0.60, "non_english_mean": 0.5}, "b": {"english": 0.58, "non_english_mean": 0.6}},
    ...            {"a": "a-s0", "b": "b-s0"}, {"a": {"training.learning_rate": 1e-4}, "b": {"training.learning_rate": 2e-4}})
    >>> out["selected"], out["candidates"]["b"]["eligible"], out["at_edge"]
    ('a', False, None)
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
            "at_edge": grid_edge(sel, settings, best),
            "rule": (f"highest dev {sel.metric} among the candidates whose dev English is at most "
                     f"{sel.english_tolerance:g} below {reference}; ties: the earlier candidate")}
