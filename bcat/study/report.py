"""``REPORT.md`` and ``REPORT.html`` of a study, built from the results folder alone.

Sections: the statement against the paper (each BCAT arm evaluated on test against its shuffled
twin, and against the end of its twin chain: :func:`judged_pairs`; seeds paired); the selection on
dev; test results per arm (seeds pooled) with charts of per-language accuracy, the gap and the
unseen languages; every arm against its twin (paired bootstrap over groups + McNemar, seeds pooled
and paired); the dev ablations (first seeds); dev learning curves; the OOD suite; answer language
and consistency; and every run with its commands, machine and wall time.

A setting counts as **better** than its twin only when the non-English (seen) mean rises (its
paired 95% interval lies above 0: seed-aware when the arms have several seeds, see
:mod:`bcat.evaluation.compare`) AND English falls by at most the study's ``english_tolerance``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bcat.config import load_config
from bcat.evaluation.compare import Run, compare_runs, load_run
from bcat.evaluation.metrics import HEADLINE_METRIC
from bcat.data.rag import group_kinds
from bcat.evaluation.stats import mcnemar_exact
from bcat.report.charts import headline_chart, per_language_chart
from bcat.report.render import write_document
from bcat.report.tables import (
    Table,
    accuracy_table,
    all_languages,
    agreement_table,
    fmt,
    headline_table,
    kind_table,
    seed_pairs_table,
    verdict_table,
)
from bcat.study import grid
from bcat.study.charts import curve_chart, ood_chart
from bcat.study.results import ood_means, pooled_metrics, pooled_ood
from bcat.study.selection import edge_note, holds, recorded_pick

PAPER_GAP = {"orpo": (13.6, 3.6), "dpo": (13.9, 4.1)}
"""English minus non-English gap (points) before -> after batch-level alignment, as secondary summaries
of arXiv 2509.23659 report it (/work/shared/REFERENCE.md section 1; the full text is not available)."""

GAP_SHRINK_NOTED = 0.01
"""A gap that shrinks by at least this (1 point) while English falls past the tolerance is called a loss."""

OOD_HEADLINE = {"lastword": "accuracy", "retrieval": "top1", "arith": "accuracy", "mgsm": "accuracy"}
"""The number each OOD task is summarised by."""


@dataclass
class Finished:
    run: grid.Run
    data: dict
    folder: Path

    @property
    def objective(self) -> str:
        return load_config(None, self.run.overrides).objective.name if self.run.trained else "-"

    def split(self, name: str) -> Optional[Run]:
        path = self.folder / name
        if not (path / "metrics.json").is_file():
            return None
        return load_run(path, need_items=(path / "predictions.jsonl").is_file())


class StudyResults:
    """The finished runs of a study, grouped by arm."""

    def __init__(self, spec: grid.StudySpec, results: Path):
        self.spec, self.results = spec, results
        made = [(sel, recorded_pick(results, sel)) for sel in spec.selection]
        self.selections = [(sel, out) for sel, out in made if out]
        planned = grid.expand(spec, {sel.name: out["selected"] for sel, out in self.selections if holds(sel, out)})
        self.planned = planned
        self.finished: list[Finished] = []
        for run in planned:
            path = results / f"{run.name}.json"
            if path.is_file():
                self.finished.append(Finished(run, json.loads(path.read_text(encoding="utf-8")), results / "runs" / run.name))
        self.arms = [a.name for a in spec.arms]

    def of_arm(self, arm: str, split: str, seeds: Optional[set] = None) -> list[Finished]:
        out = [f for f in self.finished if f.run.arm == arm and (f.folder / split / "metrics.json").is_file()
               and (seeds is None or f.run.seed in seeds)]
        return sorted(out, key=lambda f: -1 if f.run.seed is None else f.run.seed)

    def pooled(self, arm: str, split: str, seeds: Optional[set] = None) -> Optional[Run]:
        """The arm's seeds on ``split`` as one run (mean over seeds), named after the arm."""
        runs = [r for r in (f.split(split) for f in self.of_arm(arm, split, seeds)) if r is not None]
        rag = [r for r in runs if r.metrics.get("per_language")]
        if not runs:
            return None
        metrics = pooled_metrics(rag, n_resamples=self.spec.bootstrap) if rag else {}
        ood = [r.metrics["ood"] for r in runs if r.metrics.get("ood")]
        if ood:
            metrics["ood"] = pooled_ood(ood)
        label = arm + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")
        return Run(Path(label), metrics, {})

    def twin_comparison(self, arm: str, twin: str) -> Optional[tuple[str, dict]]:
        """``(split, comparison)`` of ``arm`` against ``twin``: on test when both have test runs, else dev;
        the seeds both have, paired."""
        for split in ("test", "dev"):
            mine = {f.run.seed: f for f in self.of_arm(arm, split)}
            theirs = {f.run.seed: f for f in self.of_arm(twin, split)}
            seeds = sorted(set(mine) & set(theirs))
            if seeds:
                a = [theirs[s].split(split) for s in seeds]
                b = [mine[s].split(split) for s in seeds]
                kinds = group_kinds(grid.resolve_data(getattr(self.spec.data, split))) or None
                return split, compare_runs(a, b, n_resamples=self.spec.bootstrap, kinds=kinds)
        return None


# --- the statement -----------------------------------------------------------------------------------

def judged_pairs(spec: grid.StudySpec) -> list[tuple[str, str]]:
    """``(arm, reference)`` pairs the report judges: each arm against its twin and, when the twin has a
    twin of its own (``no_anchor -> grouped -> shuffled``), also against the end of that chain, the
    ordinary fine-tuning every setting is finally measured against."""
    twin_of = {a.name: a.twin for a in spec.arms if a.twin}
    pairs = []
    for arm, twin in twin_of.items():
        pairs.append((arm, twin))
        root, seen = twin, {arm}
        while root in twin_of and root not in seen:
            seen.add(root)
            root = twin_of[root]
        if root != twin:
            pairs.append((arm, root))
    return pairs


def pooled_mcnemar(comparison: dict, langs: list[str]) -> Optional[float]:
    """Exact McNemar over the discordant items of several languages together."""
    rows = [comparison["per_language"][l] for l in langs if l in comparison["per_language"]]
    if not rows:
        return None
    return mcnemar_exact(sum(r["a_only_correct"] for r in rows), sum(r["b_only_correct"] for r in rows))


def verdict_line(arm: str, twin: str, objective: str, comparison: dict, split: str, ood_a: dict, ood_b: dict,
                 english_tolerance: float, ood_seeds: Sequence = ()) -> list[str]:
    """The plain statement for one arm against its twin (``ood_seeds``: the seeds both have OOD results of,
    named because the OOD suite may have run on fewer seeds than the test split)."""
    h, langs = comparison["headline"], comparison["languages"]
    seen_other = [l for l in langs["seen"] if l != langs["anchor"]]
    seeds = comparison.get("seeds_pooled", 1)
    lines = [f"### {arm} against {twin} ({objective.upper()}, {split} split, {comparison['n_groups']} groups, "
             f"{seeds} seed{'s' if seeds > 1 else ''} per arm)",
             f"- Intervals: {comparison['interval']}."]

    def per_seed(name: str) -> str:
        if seeds < 2:
            return ""
        return "; per seed pair " + ", ".join(f"{p['diff'][name] * 100:+.1f}" for p in comparison["per_seed"])

    def pooled_p(langs_: list[str]) -> str:  # pooled McNemar counts items as independent: one seed only
        return f", pooled McNemar p = {pooled_mcnemar(comparison, langs_):.3g}" if seeds == 1 else ""

    gap = h.get("gap")
    if gap:
        closed = (gap["a"] - gap["b"]) / gap["a"] * 100 if gap["a"] > 0 else None
        # a share of a gap smaller than the change's own uncertainty is noise, however large it reads
        half_width = (gap["ci"][1] - gap["ci"][0]) / 2 if gap["ci"] else 0.0
        paper = PAPER_GAP.get(objective)
        paper_text = f" (paper: {(paper[0] - paper[1]) / paper[0] * 100:.0f}%, {paper[0]} -> {paper[1]} points)" if paper else ""
        lines.append(f"- Gap (English minus seen non-English mean): {gap['a'] * 100:+.1f} -> {gap['b'] * 100:+.1f} points, "
                     f"change {gap['diff'] * 100:+.1f} (95% CI {_pts(gap['ci'])}{per_seed('gap')}); "
                     + (f"{twin} has no positive gap to close{paper_text}." if closed is None
                        else f"{twin}'s gap is within the change's 95% CI half-width ({half_width * 100:.1f} points): "
                             f"no share of it closed is quoted{paper_text}." if gap["a"] <= half_width
                        else f"{closed:.0f}% of {twin}'s gap closed{paper_text}." if closed >= 0
                        else f"the gap grew by {-closed:.0f}% of {twin}'s{paper_text}."))
    en, non = h.get("english"), h.get("non_english_mean")
    if en:
        lines.append(f"- English: {en['a'] * 100:.1f} -> {en['b'] * 100:.1f} ({en['diff'] * 100:+.1f} points, 95% CI "
                     f"{_pts(en['ci'])}, p = {comparison['per_language'][langs['anchor']]['p']:.3g}{per_seed('english')}).")
    if non:
        lines.append(f"- Seen non-English mean: {non['a'] * 100:.1f} -> {non['b'] * 100:.1f} ({non['diff'] * 100:+.1f} "
                     f"points, 95% CI {_pts(non['ci'])}{pooled_p(seen_other)}{per_seed('non_english_mean')}).")
    un = h.get("unseen_mean")
    if un:
        per = ", ".join(f"{l} {comparison['per_language'][l]['diff'] * 100:+.1f} (p = {comparison['per_language'][l]['p']:.3g})"
                        for l in langs["unseen"])
        lines.append(f"- Unseen languages mean: {un['a'] * 100:.1f} -> {un['b'] * 100:.1f} ({un['diff'] * 100:+.1f} points, "
                     f"95% CI {_pts(un['ci'])}{pooled_p(langs['unseen'])}{per_seed('unseen_mean')}); "
                     f"per language: {per}.")
    significant = [f"{l} {r['verdict']}" for l, r in comparison["per_language"].items() if r["verdict"] != "no significant change"]
    lines.append(f"- Per language (Holm-adjusted over {len(comparison['per_language'])} languages): "
                 + (", ".join(significant) if significant else "no significant change in any language") + ".")
    ood_changes = [f"{task} {OOD_HEADLINE[task]} {(ood_b[task][OOD_HEADLINE[task]] - ood_a[task][OOD_HEADLINE[task]]) * 100:+.1f}"
                   for task in OOD_HEADLINE if task in ood_a and task in ood_b
                   and ood_a[task].get(OOD_HEADLINE[task]) is not None and ood_b[task].get(OOD_HEADLINE[task]) is not None]
    if ood_changes:
        which = (f"; seed {ood_seeds[0]} only" if len(ood_seeds) == 1 else
                 f"; seeds {', '.join(map(str, ood_seeds))}" if ood_seeds else "")
        lines.append(f"- OOD change (points, mean over languages{which}): {'; '.join(ood_changes)}.")
    if en and non:
        rises = non["ci"] is not None and non["ci"][0] > 0
        keeps = en["diff"] >= -english_tolerance
        if rises and keeps:
            lines.append(f"- **Better** than {twin}: non-English rises (interval above 0) and English falls by at most "
                         f"{english_tolerance * 100:g} points.")
        else:
            falls = non["ci"] is not None and non["ci"][1] < 0
            why = ([] if rises else [f"non-English falls by {-non['diff'] * 100:.1f} points (interval below 0)" if falls
                                     else "non-English does not rise significantly"])
            why += [] if keeps else [f"English falls by {-en['diff'] * 100:.1f} points (more than {english_tolerance * 100:g})"]
            shrink = " The gap shrinks because English falls: a loss, not a gain." if (
                gap and gap["diff"] <= -GAP_SHRINK_NOTED and not keeps) else ""
            lines.append(f"- **{'Worse' if falls else 'Not better'}** than {twin}: {'; '.join(why)}.{shrink}")
    return lines


def _pts(ci) -> str:
    return f"[{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if ci else "n/a"


# --- the document -------------------------------------------------------------------------------------

def build_study_report(spec: grid.StudySpec, results: Path) -> tuple[Path, Path]:
    """Write ``REPORT.md``, ``REPORT.html`` and ``report/*.png`` into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    sr = StudyResults(spec, results)
    sections: list[tuple[str, list]] = []
    planned, done = len(sr.planned), len(sr.finished)
    waiting = len(grid.expand(spec, {s.name: s.candidates[0] for s in spec.selection})) - planned
    status = (f"{done} of {planned} planned runs finished" + ("" if done == planned else "; the others are not in "
              "these tables yet") + (f"; {waiting} more runs wait for a selection on dev" if waiting else "")
              + f". Study file: `{spec.source}`. Dev ({spec.data.dev}) for every choice, "
              f"test ({spec.data.test}) once per run. The headline metric is each language's accuracy as "
              "`bcat eval` scores it: strict accuracy (the first line names an accepted answer and no other "
              "candidate value of the item).")
    sections.append(("Status", [status]))

    # statement
    statement: list = []
    twins = judged_pairs(spec)
    for arm, twin in twins:
        found = sr.twin_comparison(arm, twin)
        if found is None or found[0] != "test":
            continue
        split, comparison = found
        objective = next((f.objective for f in sr.finished if f.run.arm == arm), "-")
        ood_seeds = sorted({f.run.seed for f in sr.of_arm(arm, "ood")} & {f.run.seed for f in sr.of_arm(twin, "ood")})
        a_run, b_run = sr.pooled(twin, "ood", set(ood_seeds)), sr.pooled(arm, "ood", set(ood_seeds))
        ood_a = ood_means(a_run.metrics.get("ood", {})) if a_run else {}
        ood_b = ood_means(b_run.metrics.get("ood", {})) if b_run else {}
        lines = verdict_line(arm, twin, objective, comparison, split, ood_a, ood_b, spec.english_tolerance, ood_seeds)
        statement += [lines[0], "\n".join(lines[1:])]
    sections.append(("Against the paper", statement or [
        "Not yet: no arm with a shuffled twin has finished on the test split."]))

    tables = []
    for spec_sel, sel in sr.selections:
        reference = sel["reference"]
        rows = [[arm, fmt(v[sel["metric"]]), fmt(v["english"]), fmt(v["english_vs_reference"], signed=True),
                 "yes" if v["eligible"] else "no"] for arm, v in sel["candidates"].items()]
        note = (f"Selected: {sel['selected']}. Rule: {sel['rule']}." + ("" if sel["english_constraint_met"] else
                " No candidate kept English within the tolerance, so the pick rests on the metric alone.")
                + (" " + edge_note(spec_sel, sel) if sel.get("at_edge") else ""))
        tables += ([f"### {sel['name']}"] if sel["name"] else []) + [
            Table(["candidate", sel["metric"], "English", "English vs " + (reference["arm"] or "the best candidate"),
                   "eligible"], rows, note)]
    if tables:
        sections.append(("Selection on dev", tables))

    # test, seeds pooled
    test_runs = [r for r in (sr.pooled(a, "test") for a in sr.arms) if r is not None and r.metrics.get("per_language")]
    if test_runs:
        names = [r.path.name for r in test_runs]
        langs, unseen = all_languages(test_runs)
        unseen_langs = [l for l in langs if l in unseen]
        sections.append(("Test split (seeds pooled)", [
            "Accuracy is the mean over an arm's seeds; intervals: 95% percentile bootstrap over groups (all seeds "
            "and languages of a group drawn together).",
            headline_table(test_runs, names),
            ("report/test_headline.png", headline_chart(test_runs, names), "English, non-English, unseen and the gap per arm"),
            ("report/test_accuracy.png", per_language_chart(test_runs, names, langs, unseen, HEADLINE_METRIC, "strict accuracy", True),
             "accuracy per language and arm"),
            accuracy_table(test_runs, names, langs, unseen)]
            + ([("report/test_unseen.png", per_language_chart(test_runs, names, unseen_langs, unseen, HEADLINE_METRIC,
                                                              "strict accuracy", True), "unseen languages per arm")]
               if unseen_langs else [])))

    # comparisons with the twin
    parts: list = []
    for arm, twin in twins:
        found = sr.twin_comparison(arm, twin)
        if found is None:
            continue
        split, comparison = found
        parts += [f"### {arm} vs {twin} ({split}, {comparison.get('seeds_pooled', 1)} seed(s) paired)",
                  verdict_table(comparison, [twin, arm])]
        if len(comparison["per_seed"]) > 1:
            parts.append(seed_pairs_table(comparison, [twin, arm]))
        if comparison.get("by_kind"):
            parts.append(kind_table(comparison, [twin, arm]))
    if parts:
        sections.append(("Each arm against its shuffled twin", [
            "One seed per arm: paired bootstrap over groups and exact McNemar, which treat the trained models as "
            "fixed (training noise left out). Several seeds: the seeds both arms have, paired by seed; interval and "
            "p from a bootstrap over seed pairs and groups (bcat.evaluation.compare). Per-language verdicts use "
            "Holm's correction over the languages. On test when both arms have test runs, else on dev."] + parts))

    # dev ablations: first seeds
    first = {a.name: {a.seeds[0]} if a.train else None for a in spec.arms}
    dev_runs = [r for r in (sr.pooled(a, "dev", first[a]) for a in sr.arms) if r is not None and r.metrics.get("per_language")]
    if dev_runs:
        names = [r.path.name for r in dev_runs]
        langs, unseen = all_languages(dev_runs)
        sections.append(("Dev split: every arm, first seed (single seed: ablations are not replicated)", [
            headline_table(dev_runs, names),
            ("report/dev_headline.png", headline_chart(dev_runs, names), "dev headline per arm"),
            accuracy_table(dev_runs, names, langs, unseen)]))

    # learning curves
    curves = {f.run.name: f.data["curve"] for f in sr.finished if f.data.get("curve")}
    if curves:
        rows = [[name, str(p["step"]), fmt(p.get("english")), fmt(p.get("non_english_mean")), fmt(p.get("gap"), signed=True),
                 fmt(p.get("unseen_mean"))] for name, points in curves.items() for p in points]
        sections.append(("Learning curves on dev", [
            f"First {spec.curve.groups} dev groups; step 0 is the base model, the last step the finished run. Only "
            "dev is used to choose steps and settings.",
            ("report/dev_curves.png", curve_chart(curves), "dev accuracy against training step"),
            Table(["run", "step", "English", "non-English (seen)", "gap", "unseen"], rows)]))

    # OOD
    ood_runs = [(a, r) for a, r in ((a, sr.pooled(a, "ood")) for a in sr.arms) if r is not None and r.metrics.get("ood")]
    if ood_runs:
        means = [ood_means(r.metrics["ood"]) for _, r in ood_runs]
        tasks = [t for t in dict.fromkeys(t for m in means for t in m)]
        rows = [[r.path.name] + [fmt((m.get(t) or {}).get(OOD_HEADLINE.get(t, ""))) for t in tasks]
                for (_, r), m in zip(ood_runs, means)]
        chart = ood_chart([r.path.name for _, r in ood_runs], means, {t: OOD_HEADLINE[t] for t in tasks if t in OOD_HEADLINE})
        sections.append(("Out-of-domain suite", [
            f"`bcat eval --suite ood --limit {spec.eval.ood_limit}`: means over languages, seeds pooled. Retention "
            "checks: compare with the base model and with the twin.",
            Table(["arm"] + [f"{t}\n{OOD_HEADLINE.get(t, '-')}" for t in tasks], rows)]
            + ([("report/ood.png", chart, "OOD means per arm")] if chart else [])))

    if test_runs:
        names = [r.path.name for r in test_runs]
        langs, _ = all_languages(test_runs)
        sections.append(("Answer language and agreement with English (test, seeds pooled)",
                         [agreement_table(test_runs, names, langs)]))

    # runs
    rows, blocks = [], []
    for f in sr.finished:
        d = f.data
        tr = d.get("training") or {}
        m = d.get("machine") or {}
        rows.append([f.run.name, f.run.arm, "-" if f.run.seed is None else str(f.run.seed), str(tr.get("steps", "-")),
                     str(tr.get("tokens", "-")), f"{d['wall_time_s']['train'] / 60:.1f}", f"{d['wall_time_s']['eval'] / 60:.1f}",
                     f"{m.get('device', '-')}, {m.get('cpu_count', '-')} CPUs",
                     ", ".join(sorted(d.get("splits", {}))), d.get("finished", "-")])
        loads = [c.get("loadavg_1min_start") for c in d.get("commands", [])]
        blocks.append(f"```\n# {f.run.name}: load average (1 min) at each command's start: {loads}\n"
                      + "\n".join(" ".join(c["argv"]) + f"   # {c['seconds'] / 60:.1f} min, exit {c['rc']}"
                                  for c in d.get("commands", [])) + "\n```")
    if rows:
        sections.append(("Runs", [Table(["run", "arm", "seed", "steps", "tokens", "train min", "eval min", "machine",
                                          "splits", "finished"], rows,
                                         "Minutes are wall time of the commands (all attempts of a resumed step). "
                                         "A machine shared with other work runs slower: see the load averages below.")]
                         + blocks))
    return write_document(sections, results, f"bcat study: {spec.name}", "bcat study", stem="REPORT")
