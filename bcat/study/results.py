"""What a study run's results hold, read back from ``bcat eval`` outputs: summaries, curves, seeds pooled.

Everything here reads the files a run leaves in the results folder (``runs/<run>/<split>/metrics.json``
and ``predictions.jsonl``), never the cache, so the report can be rebuilt from committed files alone.
The headline metric is ``bcat eval``'s (:data:`bcat.evaluation.metrics.HEADLINE_METRIC`, strict
accuracy): each prediction's verdict as :func:`bcat.evaluation.compare.load_run` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from bcat.evaluation.compare import Run, headline_statistics, load_run
from bcat.evaluation.metrics import HEADLINE_METRIC
from bcat.evaluation.stats import GroupMatrix, bootstrap_ci, language_accuracy
from bcat.languages import ANCHOR

HEADLINE = ("english", "non_english_mean", "gap", "unseen_mean", "all_non_english_mean")
"""Headline numbers of a split; ``all_non_english_mean`` is the mean over every non-English language
(seen and unseen), which the study adds to ``bcat eval``'s."""

DROPPED_PREDICTION_FIELDS = ("prompt",)
"""Fields of ``predictions.jsonl`` left out of the results copy: the prompt is rebuilt from the data
file by ``bcat eval`` and would make the copy about ten times larger."""


def copy_predictions(src: Path, dst: Path) -> None:
    """Copy ``predictions.jsonl`` without :data:`DROPPED_PREDICTION_FIELDS`."""
    with src.open(encoding="utf-8") as f, dst.open("w", encoding="utf-8") as out:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                for key in DROPPED_PREDICTION_FIELDS:
                    rec.pop(key, None)
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")


# --- headline numbers from per-item correctness ------------------------------------------------------

def language_split(metrics: dict) -> tuple[str, list[str], list[str]]:
    """``(anchor, seen, unseen)`` of an eval run's metrics."""
    info = metrics.get("languages") or {}
    return info.get("anchor", ANCHOR), list(info.get("seen", [])), list(info.get("unseen", []))


def headline_stats(langs: Sequence[str], anchor: str, seen: Sequence[str], unseen: Sequence[str]) -> dict:
    """The :data:`HEADLINE` statistics of a ``resamples x languages`` accuracy matrix (None if undefined)."""
    stats = headline_statistics(langs, anchor, seen, unseen, all_non_english=True)
    return {name: stats.get(name) for name in HEADLINE}


def summarize_matrix(matrix: GroupMatrix, anchor: str, seen: Sequence[str], unseen: Sequence[str], *,
                     n_resamples: int = 0, seed: int = 0) -> dict:
    """Per-language accuracy and the headline numbers of a correctness matrix (values may be means over
    seeds), with group-bootstrap intervals when ``n_resamples`` > 0."""
    acc = language_accuracy(matrix.values)
    out: dict = {HEADLINE_METRIC: {l: float(acc[i]) for i, l in enumerate(matrix.langs)}}
    ci: dict = {"per_language": {}}
    for name, stat in headline_stats(matrix.langs, anchor, seen, unseen).items():
        out[name] = None if stat is None else float(stat(acc[None, :])[0])
        if n_resamples and stat is not None:
            ci[name] = bootstrap_ci(matrix.values, stat, n_resamples=n_resamples, seed=seed)
    if n_resamples:
        for i, l in enumerate(matrix.langs):
            ci["per_language"][l] = bootstrap_ci(matrix.values, lambda a, c=i: a[:, c], n_resamples=n_resamples,
                                                 seed=seed)
        out["ci"] = ci
    return out


def correctness_matrix(run: Run, langs: Sequence[str], groups: Optional[Iterable[str]] = None) -> GroupMatrix:
    """A run's items (only ``groups`` when given) as a groups x languages matrix."""
    keep = None if groups is None else set(groups)
    items = [(g, l, c) for (g, l), c in sorted(run.correct.items()) if keep is None or g in keep]
    return GroupMatrix.from_items(items, langs)


# --- one run -------------------------------------------------------------------------------------------

def split_summary(eval_dir: Path) -> dict:
    """The numbers of one evaluation (``bcat eval`` output directory) that a run's JSON keeps."""
    run = load_run(eval_dir, need_items="per_language" in json.loads((eval_dir / "metrics.json").read_text()))
    m = run.metrics
    out: dict = {"model": m.get("model"), "data": m.get("data"), "data_fingerprint": m.get("data_fingerprint"),
                 "seconds": m.get("seconds"), "options": m.get("options")}
    if m.get("per_language"):
        anchor, seen, unseen = language_split(m)
        langs = seen + unseen
        numbers = summarize_matrix(correctness_matrix(run, langs), anchor, seen, unseen)
        out.update({"languages": m["languages"], "n_items": len(run.correct), "n_groups": m.get("n_groups"),
                    "per_language": m["per_language"],
                    **{k: m.get(k, numbers[k]) for k in HEADLINE},
                    "ci": {k: v for k, v in (m.get("ci") or {}).items() if k in HEADLINE}})
    if m.get("ood"):
        out["ood"] = m["ood"]
        out["ood_means"] = ood_means(m["ood"])
    return out


def ood_means(ood: dict) -> dict[str, dict[str, float]]:
    """Per OOD task, each metric's mean over languages, e.g. ``{"lastword": {"accuracy": .., "ppl": ..}}``."""
    out: dict[str, dict[str, float]] = {}
    for task, result in ood.items():
        per_lang = [v for v in (result or {}).values() if isinstance(v, dict)]
        names = {k for v in per_lang for k, x in v.items() if isinstance(x, (int, float)) and k != "n"}
        means = {k: float(np.mean([v[k] for v in per_lang if isinstance(v.get(k), (int, float))])) for k in sorted(names)}
        if means:
            out[task] = means
    return out


def curve_point(eval_dir: Path, step: int, groups: Sequence[str]) -> dict:
    """One learning-curve point: the headline numbers of an evaluation restricted to ``groups``."""
    run = load_run(eval_dir)
    anchor, seen, unseen = language_split(run.metrics)
    matrix = correctness_matrix(run, seen + unseen, groups)
    if len(matrix.groups) != len(groups):
        missing = sorted(set(groups) - set(matrix.groups))[:3]
        raise ValueError(f"{eval_dir}: the curve's groups are not all evaluated (missing {', '.join(missing)})")
    return {"step": step, "groups": len(groups), **summarize_matrix(matrix, anchor, seen, unseen)}


def train_summary(train_dir: Path) -> dict:
    """Steps, tokens, wall time and last loss terms of a finished training run, and its loss curve."""
    summary = json.loads((train_dir / "training_summary.json").read_text())
    log = [json.loads(line) for line in (train_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    keys = [k for k in ("loss", "main", "hidden", "output") if log and k in log[-1]]
    return {"steps": summary.get("steps"), "tokens": summary.get("tokens"),
            "wall_time_s_last_attempt": summary.get("wall_time_s"), "final_terms": summary.get("final_terms"),
            "loss_curve": [{"step": e["step"], **{k: e[k] for k in keys if k in e}} for e in log]}


# --- seeds pooled ----------------------------------------------------------------------------------------

def pooled_metrics(runs: Sequence[Run], *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """An eval-metrics-shaped dict for several seeds of one arm on the same items: accuracy is the
    mean over seeds, intervals resample groups (all seeds of a group together); the other
    per-language numbers and the OOD results are means over seeds. Usable wherever the report reads
    ``metrics.json`` (wrapped in a :class:`~bcat.evaluation.compare.Run`)."""
    first = runs[0]
    anchor, seen, unseen = language_split(first.metrics)
    langs = seen + unseen
    keys = sorted(first.correct)
    for other in runs[1:]:
        if sorted(other.correct) != keys:
            raise ValueError(f"{other.path} and {first.path} hold different items: seeds cannot be pooled")
    matrices = [correctness_matrix(r, langs) for r in runs]
    pooled = GroupMatrix(matrices[0].groups, langs, np.mean([m.values for m in matrices], axis=0))
    numbers = summarize_matrix(pooled, anchor, seen, unseen, n_resamples=n_resamples, seed=seed)
    per_language = {}
    for lang in langs:
        entries = [r.metrics["per_language"].get(lang, {}) for r in runs]
        numeric = {k for e in entries for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        per_language[lang] = {k: _mean([e.get(k) for e in entries]) for k in sorted(numeric)}
        per_language[lang][HEADLINE_METRIC] = numbers[HEADLINE_METRIC][lang]
        per_language[lang]["n"] = int((~np.isnan(pooled.values[:, pooled.col(lang)])).sum())
    out = {"languages": first.metrics["languages"], "per_language": per_language,
           **{k: numbers[k] for k in HEADLINE}, "ci": numbers["ci"], "n_groups": len(pooled.groups),
           "items": [list(k) for k in keys], "seeds": len(runs),
           "model": ", ".join(str(r.metrics.get("model")) for r in runs),
           "data_fingerprint": first.metrics.get("data_fingerprint")}
    return out


def pooled_ood(ood_results: Sequence[dict]) -> dict:
    """Mean over seeds of every numeric OOD entry (task -> language -> metric)."""
    out: dict = {}
    for task in dict.fromkeys(t for r in ood_results for t in r):
        per = [r.get(task) or {} for r in ood_results]
        out[task] = {}
        for key in dict.fromkeys(k for p in per for k in p):
            values = [p.get(key) for p in per]
            if all(isinstance(v, dict) for v in values):
                metrics = dict.fromkeys(m for v in values for m in v)
                out[task][key] = {m: _mean([v.get(m) for v in values]) for m in metrics}
            else:
                out[task][key] = values[0]
    return out


def _mean(values) -> Optional[float]:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(np.mean(nums)) if nums else None
