"""The time plan of a study: what each run costs in CPU time and what is left (``bcat study --plan``).

Estimates come from the study file's ``timing`` (measured on the machine that will run the grid):
steps x seconds per step (scaled by records per step and objective), items x seconds per item,
plus start-up per command. Finished, cached, adopted and shared steps are not counted again. Once
runs have finished, their recorded command times say how far off those rates are on this machine,
and the plan also gives the remaining time at the measured rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bcat.config import load_config
from bcat.languages import LANGUAGES
from bcat.study.grid import Run, StudySpec, expand

def count_items(path: Path, groups: Optional[int]) -> int:
    """Items ``bcat eval --limit groups`` evaluates in a RAG file (without validating it)."""
    seen_groups: list[str] = []
    n = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            group = json.loads(line)["group"]
            if group not in seen_groups:
                if groups is not None and len(seen_groups) >= groups:
                    continue
                seen_groups.append(group)
            n += 1
    return n


@dataclass
class Estimate:
    """Estimated CPU seconds of a run's steps."""

    train_s: float = 0.0
    eval_s: dict[str, float] = field(default_factory=dict)
    """Per evaluation: ``dev``, ``test``, ``ood``, ``curve-N``."""

    @property
    def total_s(self) -> float:
        return self.train_s + sum(self.eval_s.values())


def step_seconds(spec: StudySpec, overrides: list[str]) -> float:
    """Seconds per optimizer step from ``spec.timing``, scaled by records per step, objective and
    gradient checkpointing."""
    t, cfg = spec.timing, load_config(None, overrides)
    # every mode sees the records of `grouped` (bcat.batching.sampler), except no_anchor: no anchor records
    others = cfg.batch.languages_per_group or len(spec.data.train_languages) - 1
    per_group = others + (cfg.batch.mode != "no_anchor")
    records = cfg.batch.groups_per_batch * per_group * cfg.training.gradient_accumulation_steps
    checkpointing = t.checkpointing_factor if cfg.model.gradient_checkpointing else 1.0
    return (t.step_s[cfg.batch.mode] * records / t.reference_records * t.objective_factor.get(cfg.objective.name, 1.0)
            * checkpointing)


def estimate(spec: StudySpec, run: Run, item_counts: dict[str, int]) -> Estimate:
    """CPU seconds of one run, from ``spec.timing``: steps x step time, items x item time, plus
    start-up per command. ``item_counts``: RAG items of ``dev``, ``test`` and ``curve`` (one curve point)."""
    t = spec.timing
    est = Estimate()
    if run.trained:
        est.train_s = load_config(None, run.overrides).training.max_steps * step_seconds(spec, run.overrides) \
            + t.command_s
    for split in ("dev", "test"):
        if getattr(run, split):
            est.eval_s[split] = item_counts[split] * t.eval_item_s + t.command_s
    if run.ood:
        est.eval_s["ood"] = spec.eval.ood_limit * len(LANGUAGES) * 3 * t.ood_item_s + t.command_s
    for step in run.curve_steps:
        est.eval_s[f"curve-{step}"] = item_counts["curve"] * t.eval_item_s + t.command_s
    return est


@dataclass
class Measured:
    """Recorded seconds of finished runs' commands of one kind, and what the plan estimates for them."""

    seconds: float = 0.0
    estimated_s: float = 0.0
    commands: int = 0
    outputs: set = field(default_factory=set)
    """Outputs counted: a training shared by several runs is in each run's record, and counts once."""

    @property
    def ratio(self) -> Optional[float]:
        return self.seconds / self.estimated_s if self.estimated_s > 0 else None


def record_measured(measured: dict[str, Measured], est: Estimate, result: dict) -> None:
    """Add a finished run's recorded commands (its RUN.json) to ``measured``, each against its estimate;
    re-scorings of adopted evaluations (``bcat score``) have no estimate and are left out."""
    for command in result.get("commands", []):
        kind, output = command["argv"][1], command["output"]
        estimated = est.train_s if kind == "train" else est.eval_s.get(Path(output).name) if kind == "eval" else None
        if not estimated or output in measured[kind].outputs:
            continue
        m = measured[kind]
        m.outputs.add(output)
        m.seconds += command["seconds"]
        m.estimated_s += estimated
        m.commands += 1


def plan(study) -> tuple[list[dict], str]:
    """Every run with its status and estimated CPU time; the text prints it, arithmetic included."""
    spec = study.spec
    counts = {"dev": count_items(study.dev, spec.data.dev_groups), "test": count_items(study.test, spec.data.test_groups),
              "curve": count_items(study.dev, spec.curve.groups)}
    runs = study.runs()
    estimated_as = {}
    if study.pending_selection():  # stand in each pending selection's first candidate, in the order they will run
        picks = study.picks()
        runs = expand(spec, {sel.name: picks.get(sel.name, sel.candidates[0]) for sel in spec.selection})
        estimated_as = {r.name: r.selected for r in runs if r.selected and r.selected not in picks.values()}
    rows, seen_keys, seen_evals = [], set(), set()
    measured = {"train": Measured(), "eval": Measured()}
    for run in runs:
        est: Estimate = estimate(spec, run, counts)
        key = run.key(spec)
        status = "done" if study.finished(run) else "to do"
        if status != "done" and any(Path(d).is_dir() and not (Path(d) / "metrics.json").is_file()
                                    for d in study.spec_arm(run).adopt.values()):
            status = "waits"  # for an adopted evaluation still being written
        cost = {"train": 0.0, "eval": 0.0}
        if status == "done":
            record_measured(measured, est, json.loads(study.result_json(run).read_text(encoding="utf-8")))
        else:
            if run.trained and key not in seen_keys and not (study.train_dir(run) / "training_summary.json").is_file():
                cost["train"] += est.train_s
            for split, s in est.eval_s.items():
                out = study.eval_dir(run, split)
                adopted = study.spec_arm(run).adopt.get(split) if not run.trained else None
                adopted = adopted if adopted and Path(adopted).exists() else None
                if (key, split) in seen_evals or (out / "metrics.json").is_file() or adopted:
                    continue
                cost["eval"] += s
        if run.trained:
            seen_keys.add(key)
        seen_evals.update((key, s) for s in est.eval_s)
        rows.append({"run": run.name, "status": status, "estimate_s": est.total_s, "remaining_s": sum(cost.values()),
                     "remaining_by_kind_s": cost,
                     "train_s": est.train_s, "eval_s": est.eval_s, "estimated_as": estimated_as.get(run.name),
                     "shared": [r["run"] for r in rows if r.get("key") == key], "key": key})
    return rows, _plan_text(study, rows, counts, measured)


def _plan_text(study, rows: list[dict], counts: dict, measured: dict[str, Measured]) -> str:
    t, spec = study.spec.timing, study.spec
    lines = [f"bcat study plan: {spec.source} ({len(rows)} runs)", "",
             f"{'run':<28}{'status':<8}{'train min':>10}{'eval min':>10}{'left min':>10}  evaluations"]
    for r in rows:
        evals = ", ".join(f"{k} {v / 60:.0f}" for k, v in r["eval_s"].items())
        note = f"  (as {r['estimated_as']}: selection pending)" if r["estimated_as"] else ""
        note += f"  (shares training with {', '.join(r['shared'])})" if r["shared"] else ""
        lines.append(f"{r['run']:<28}{r['status']:<8}{r['train_s'] / 60:>10.1f}{sum(r['eval_s'].values()) / 60:>10.1f}"
                     f"{r['remaining_s'] / 60:>10.1f}  {evals}{note}")
    left = sum(r["remaining_s"] for r in rows)
    for line in study.held_back():
        lines += ["", line]
    lines += ["", f"remaining: {left / 3600:.2f} CPU-hours (shared trainings and evaluations counted once; "
                  "done, cached or adopted steps not counted)"]
    if left > 0 and any(m.ratio for m in measured.values()):
        at_measured = sum(r["remaining_by_kind_s"][kind] * (m.ratio or 1.0) for r in rows
                          for kind, m in measured.items())
        took = [f"`bcat {kind}` took {m.ratio:.2f}x its estimate over {m.commands} command{'s' * (m.commands != 1)}"
                for kind, m in measured.items() if m.ratio]
        lines.append(f"  at the rates the finished runs measured: {at_measured / 3600:.2f} CPU-hours ({', '.join(took)})")
    lines += ["",
              "arithmetic: train = max_steps x step_s[batch.mode] x records per step / "
              f"{t.reference_records} x objective factor (x {t.checkpointing_factor:g} with gradient checkpointing) + "
              f"{t.command_s:g} s start-up;",
              f"  step_s = {json.dumps(t.step_s)}, objective factor = {json.dumps(t.objective_factor)};",
              f"  eval = items x {t.eval_item_s:g} s (+{t.command_s:g} s): dev {counts['dev']} items, test "
              f"{counts['test']}, one curve point {counts['curve']};",
              f"  OOD = {spec.eval.ood_limit} items x 11 languages x 3 x {t.ood_item_s:g} s."]
    return "\n".join(lines)
