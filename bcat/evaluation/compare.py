"""``bcat compare A B``: is run B better than run A, language by language?

Both runs must hold exactly the same (group, language) items; otherwise the comparison is refused.
Everything is measured in STRICT accuracy (the headline metric: the first line names an accepted
answer and no other candidate value of the item). Per language: the difference ``B - A`` with a
PAIRED bootstrap 95% interval (the same groups are drawn for both runs), and the exact McNemar
test on the discordant items.

Verdict rule, per language, at ``alpha`` (default 0.05): **better** when the interval lies entirely
above 0 AND McNemar p < alpha; **worse** when it lies entirely below 0 AND p < alpha; otherwise
**no significant change**. Requiring both guards against the bootstrap's optimism on few groups.
The headline differences (English, seen non-English mean, gap, unseen mean) get paired intervals;
their verdict uses the interval alone (McNemar has no counterpart for a difference of means).

Seeds pooled (:func:`compare_runs` given one run per seed on each side, paired by position): an
item's correctness becomes its mean over the seeds (a value in [0, 1]), the bootstrap still draws
GROUPS (all seeds and languages of a drawn group go together, so the interval counts items, not
item-seed pairs, as the independent units), and McNemar counts the discordant (item, seed pair)
outcomes over all seed pairs. Those pairs are not independent (one item appears once per seed), so
the pooled McNemar p is optimistic; the verdict's second condition, the group-bootstrap interval,
is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from bcat.errors import BcatError
from bcat.evaluation.metrics import HEADLINE_METRIC
from bcat.evaluation.stats import (
    GroupMatrix,
    gap_statistic,
    language_accuracy,
    mcnemar_exact,
    mean_of_columns,
    paired_bootstrap_ci,
)
from bcat.languages import ANCHOR

BETTER, WORSE, SAME = "better", "worse", "no significant change"
GAP_DOWN, GAP_UP = "gap decreased", "gap increased"


@dataclass
class Run:
    """A finished ``bcat eval`` directory: its metrics and per-item strict correctness."""

    path: Path
    metrics: dict
    correct: dict[tuple[str, str], bool]

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)


def load_run(path: str | Path, *, need_items: bool = True) -> Run:
    """Read ``metrics.json`` (and ``predictions.jsonl`` when ``need_items``) from an eval directory."""
    path = Path(path)
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        raise BcatError(f"{path}: no metrics.json (is it a `bcat eval --output` directory?)")
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BcatError(f"{metrics_file}: not valid JSON ({e.msg})") from None
    correct: dict[tuple[str, str], bool] = {}
    pred_file = path / "predictions.jsonl"
    if need_items:
        if "per_language" not in metrics or not pred_file.is_file():
            raise BcatError(f"{path}: no RAG results (metrics.json without per_language, or no predictions.jsonl)")
        with pred_file.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    rec = json.loads(line)
                    if "strict_correct" not in rec:
                        raise BcatError(f"{pred_file}:{line_no}: no 'strict_correct' (written by an older bcat "
                                        f"eval); re-score it: bcat score --data DATA --predictions {pred_file} "
                                        f"--output DIR")
                    correct[(rec["group"], rec["lang"])] = bool(rec["strict_correct"])
    return Run(path, metrics, correct)


def check_same_items(a: Run, b: Run) -> None:
    """Refuse to compare runs whose (group, language) item sets differ, naming a few differences."""
    only_a, only_b = sorted(set(a.correct) - set(b.correct)), sorted(set(b.correct) - set(a.correct))
    if only_a or only_b:
        def show(keys):
            return ", ".join(f"{g}/{l}" for g, l in keys[:3]) + (" ..." if len(keys) > 3 else "")

        raise BcatError(
            f"cannot compare {a.path} and {b.path}: different items ({len(only_a)} only in the first"
            f"{': ' + show(only_a) if only_a else ''}; {len(only_b)} only in the second"
            f"{': ' + show(only_b) if only_b else ''}). Evaluate both on the same data, --languages and --limit.")


def verdict(ci: Optional[list[float]], p: Optional[float], alpha: float = 0.05) -> str:
    """The rule in the module docstring. ``p=None`` judges by the interval alone.

    >>> verdict([0.01, 0.2], 0.01), verdict([-0.2, -0.01], 0.03), verdict([0.01, 0.2], 0.08)
    ('better', 'worse', 'no significant change')
    """
    if ci is None:
        return SAME
    significant = p is None or p < alpha
    if ci[0] > 0 and significant:
        return BETTER
    if ci[1] < 0 and significant:
        return WORSE
    return SAME


def compare_runs(a: Union[Run, Sequence[Run]], b: Union[Run, Sequence[Run]], *, n_resamples: int = 2000,
                 seed: int = 0, alpha: float = 0.05, level: float = 0.95) -> dict:
    """The comparison of run ``b`` against baseline ``a`` (same items), as a JSON-ready dict.

    ``a`` and ``b`` may each be a list of runs, one per training seed, paired by position: the seeds
    are then pooled as the module docstring says.
    """
    runs_a, runs_b = ([a] if isinstance(a, Run) else list(a)), ([b] if isinstance(b, Run) else list(b))
    if not runs_a or len(runs_a) != len(runs_b):
        raise BcatError(f"compare: pooling seeds needs the same number of runs on both sides "
                        f"({len(runs_a)} and {len(runs_b)})")
    for other in runs_a[1:] + runs_b:
        check_same_items(runs_a[0], other)
    first_a, first_b = runs_a[0], runs_b[0]
    langs_info = first_b.metrics.get("languages") or first_a.metrics.get("languages") or {}
    anchor = langs_info.get("anchor", ANCHOR)
    seen = list(langs_info.get("seen", []))
    unseen = list(langs_info.get("unseen", []))
    langs = seen + unseen or sorted({l for _, l in first_a.correct})
    keys = sorted(first_a.correct)

    def matrices(runs: list[Run]) -> list[GroupMatrix]:
        return [GroupMatrix.from_items([(g, l, r.correct[(g, l)]) for g, l in keys], langs) for r in runs]

    per_seed_a, per_seed_b = matrices(runs_a), matrices(runs_b)
    ma = GroupMatrix(per_seed_a[0].groups, langs, np.mean([m.values for m in per_seed_a], axis=0))
    mb = GroupMatrix(per_seed_b[0].groups, langs, np.mean([m.values for m in per_seed_b], axis=0))

    def paired(stat):
        return paired_bootstrap_ci(ma.values, mb.values, stat, n_resamples=n_resamples, seed=seed, level=level)

    def point(matrix: GroupMatrix, stat) -> float:
        return float(stat(language_accuracy(matrix.values)[None, :])[0])

    per_lang = {}
    for lang in langs:
        col = ma.col(lang)
        present = ~np.isnan(ma.values[:, col])
        b_only_a = c_only_b = 0
        for sa, sb in zip(per_seed_a, per_seed_b):
            xa, xb = sa.values[present, col], sb.values[present, col]
            b_only_a += int(((xa == 1) & (xb == 0)).sum())  # right in A, wrong in B
            c_only_b += int(((xa == 0) & (xb == 1)).sum())
        pa, pb = float(ma.values[present, col].mean()), float(mb.values[present, col].mean())
        ci = paired(lambda acc, c=col: acc[:, c])
        p = mcnemar_exact(b_only_a, c_only_b)
        per_lang[lang] = {
            "a": pa, "b": pb, "diff": pb - pa, "ci": ci,
            "a_only_correct": b_only_a, "b_only_correct": c_only_b, "mcnemar_p": p, "n": int(present.sum()),
            "seen": lang not in unseen, "verdict": verdict(ci, p, alpha),
        }

    others = [ma.col(l) for l in seen if l != anchor]
    headline = {}
    stats = {"english": (lambda acc: acc[:, ma.col(anchor)]) if anchor in langs else None,
             "non_english_mean": mean_of_columns(others) if others else None,
             "gap": gap_statistic(ma.col(anchor), others) if anchor in langs and others else None,
             "unseen_mean": mean_of_columns([ma.col(l) for l in unseen]) if unseen else None}
    for name, stat in stats.items():
        if stat is None:
            continue
        va, vb = point(ma, stat), point(mb, stat)
        ci = paired(stat)
        v = verdict(ci, None, alpha)
        if name == "gap":  # the signed gap (English minus the rest): lower is the goal
            v = {BETTER: GAP_UP, WORSE: GAP_DOWN}.get(v, SAME)
        headline[name] = {"a": va, "b": vb, "diff": vb - va, "ci": ci, "verdict": v}

    def side(runs: list[Run]) -> dict:
        return {"path": ", ".join(str(r.path) for r in runs), "model": runs[0].metrics.get("model"),
                "data_fingerprint": runs[0].metrics.get("data_fingerprint"), "runs": len(runs)}

    fingerprints = {r.metrics.get("data_fingerprint") for r in runs_a + runs_b}
    return {
        "metric": HEADLINE_METRIC,
        "a": side(runs_a), "b": side(runs_b),
        "same_data_file": len(fingerprints) == 1,
        "option_differences": option_differences(first_a, first_b),
        "n_items": len(keys), "n_groups": len(ma.groups), "seeds_pooled": len(runs_a),
        "rule": (f"better/worse: the paired bootstrap {level:.0%} interval of B - A excludes 0 AND the exact "
                 f"McNemar p < {alpha}; headline rows: the interval alone"
                 + ("; seeds pooled: mean correctness over seeds, McNemar over all seed pairs"
                    if len(runs_a) > 1 else "")),
        "alpha": alpha, "bootstrap": {"resamples": n_resamples, "seed": seed, "unit": "group", "level": level},
        "languages": {"anchor": anchor, "seen": seen, "unseen": unseen},
        "language_split_differs": _split(first_a) != _split(first_b),
        "per_language": per_lang,
        "headline": headline,
    }


def _split(run: Run) -> tuple:
    info = run.metrics.get("languages") or {}
    return info.get("anchor"), tuple(info.get("seen", ())), tuple(info.get("unseen", ()))


def option_differences(a: Run, b: Run) -> dict[str, list]:
    """Evaluation options that differ between the runs, ``{option: [a, b]}`` (``limit`` and
    ``languages`` are covered by the item check). Differences make the comparison less clean:
    each is printed under the table.

    >>> run = lambda **o: Run(Path("r"), {"options": {"shots": 0, **o}}, {})
    >>> option_differences(run(trim_vocab=True), run(trim_vocab=False))
    {'trim_vocab': [True, False]}
    """
    oa, ob = a.metrics.get("options", {}), b.metrics.get("options", {})
    return {k: [oa.get(k), ob.get(k)] for k in sorted(set(oa) | set(ob))
            if k not in ("limit", "languages") and oa.get(k) != ob.get(k)}


def _ci(ci: Optional[list[float]]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "n/a"


def format_table(comparison: dict) -> str:
    """A plain-text table of a comparison, one row per language, then the headline rows."""
    head = f"{'':<18}{'A':>7}{'B':>7}{'B-A':>8}  {'95% CI':<18}{'McNemar p':>10}  verdict"
    lines = [f"A = {comparison['a']['path']}", f"B = {comparison['b']['path']}",
             f"metric: {comparison['metric']} (the headline: an accepted answer and no other candidate value "
             f"in the first line)", head, "-" * len(head)]
    for lang, r in comparison["per_language"].items():
        tag = lang + ("" if r["seen"] else "*")
        lines.append(f"{tag:<18}{r['a']:>7.3f}{r['b']:>7.3f}{r['diff']:>+8.3f}  {_ci(r['ci']):<18}"
                     f"{r['mcnemar_p']:>10.4f}  {r['verdict']}")
    lines.append("-" * len(head))
    for name, r in comparison["headline"].items():
        lines.append(f"{name:<18}{r['a']:>7.3f}{r['b']:>7.3f}{r['diff']:>+8.3f}  {_ci(r['ci']):<18}"
                     f"{'':>10}  {r['verdict']}")
    if comparison["languages"]["unseen"]:
        lines.append("* unseen in training")
    if comparison.get("language_split_differs"):
        lines.append("note: the runs split seen/unseen languages differently; B's split is used")
    if not comparison["same_data_file"]:
        lines.append("note: the data files differ (same item keys, different fingerprints)")
    for option, (va, vb) in comparison.get("option_differences", {}).items():
        lines.append(f"note: evaluated with different --{option.replace('_', '-')}: A {va}, B {vb}")
    return "\n".join(lines)


def run_compare(args) -> dict:
    """Everything ``bcat compare`` does: compare, write ``comparison.json``, print the table."""
    a, b = load_run(args.run_a), load_run(args.run_b)
    comparison = compare_runs(a, b, n_resamples=args.bootstrap, seed=args.seed, alpha=args.alpha)
    out_dir = Path(args.output) if args.output else b.path
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(comparison, ensure_ascii=False, indent=2) + "\n",
                                             encoding="utf-8")
    print(format_table(comparison))
    return comparison
