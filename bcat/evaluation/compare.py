"""``bcat compare A B``: is run B better than run A, language by language?

Both runs must hold exactly the same (group, language) items; otherwise the comparison is refused.
Everything is measured in STRICT accuracy (the headline metric: the first line names an accepted
answer and no other candidate value of the item). Per language: the difference ``B - A`` with a
PAIRED bootstrap 95% interval (the same groups are drawn for both runs) and a p-value; the headline
differences (English, seen non-English mean, gap, unseen mean) get paired intervals too.

One seed per side: the interval resamples groups and the p-value is the exact McNemar test on the
discordant items. Such an interval treats the two trained models as fixed: it leaves training noise
(another seed, another model) out, and the output says so.

Several seeds per side (:func:`compare_runs` given one run per training seed on each side, paired by
position): the interval and the p-value come from a hierarchical bootstrap that resamples seed pairs,
and the groups (:func:`bcat.evaluation.stats.hierarchical_paired_differences`),
so they count training noise. Each seed pair's own differences are listed too, and the seeds-pooled
group-bootstrap interval is kept beside it (``ci_groups_only``) to show how much the seeds add.

Verdict rule, per language, at ``alpha`` (default 0.05): **better** when the interval lies entirely
above 0 AND the Holm-adjusted p-value (over the languages compared) is below ``alpha``; **worse**
when it lies entirely below 0 AND the adjusted p is below ``alpha``; otherwise **no significant
change**. The headline rows are judged by their interval alone (each is one pre-stated question).

With the data's ``kind`` field (``kinds``: group -> kind), the headline differences are also given per
kind of item, so that a difference carried by one kind of question shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from bcat.data.rag import group_kinds
from bcat.errors import BcatError
from bcat.evaluation.metrics import HEADLINE_METRIC
from bcat.evaluation.scoring import BootstrapOptions, file_sha256
from bcat.evaluation.stats import (
    GroupMatrix,
    bootstrap_p_value,
    gap_statistic,
    hierarchical_paired_differences,
    holm,
    language_accuracy,
    mcnemar_exact,
    mean_of_columns,
    paired_bootstrap_ci,
    percentile_interval,
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
            f"{': ' + show(only_b) if only_b else ''}). Evaluate both on the same data, languages and limit.")


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


def _point(matrix: GroupMatrix, stat) -> float:
    return float(stat(language_accuracy(matrix.values)[None, :])[0])


@dataclass
class _Paired:
    """The per-seed correctness matrices of both sides (paired by position) and the intervals drawn from
    them: a group bootstrap with one seed pair, the hierarchical bootstrap with several."""

    a: list[GroupMatrix]
    b: list[GroupMatrix]
    n_resamples: int
    seed: int
    level: float

    @cached_property
    def mean_a(self) -> GroupMatrix:
        return GroupMatrix(self.a[0].groups, self.a[0].langs, np.mean([m.values for m in self.a], axis=0))

    @cached_property
    def mean_b(self) -> GroupMatrix:
        return GroupMatrix(self.b[0].groups, self.b[0].langs, np.mean([m.values for m in self.b], axis=0))

    def rows(self, keep: Sequence[bool]) -> "_Paired":
        """The same comparison on the groups where ``keep`` is true."""
        def pick(m: GroupMatrix) -> GroupMatrix:
            return GroupMatrix([g for g, k in zip(m.groups, keep) if k], m.langs, m.values[np.asarray(keep, bool)])
        return _Paired([pick(m) for m in self.a], [pick(m) for m in self.b], self.n_resamples, self.seed, self.level)

    def interval(self, stat) -> tuple[Optional[list[float]], Optional[float], Optional[list[float]]]:
        """(the interval, its bootstrap p-value or None, the groups-only interval or None)."""
        groups_only = paired_bootstrap_ci(self.mean_a.values, self.mean_b.values, stat, n_resamples=self.n_resamples,
                                          seed=self.seed, level=self.level)
        if len(self.a) == 1:
            return groups_only, None, None
        samples = hierarchical_paired_differences([m.values for m in self.a], [m.values for m in self.b], stat,
                                                  n_resamples=self.n_resamples, seed=self.seed)
        return percentile_interval(samples, self.level), bootstrap_p_value(samples), groups_only

    def headline(self, stats: dict, alpha: float) -> dict:
        """Each headline statistic: A, B, B - A, its interval and verdict (the interval alone decides)."""
        ma, mb = self.mean_a, self.mean_b
        rows = {}
        for name, stat in stats.items():
            va, vb = _point(ma, stat), _point(mb, stat)
            ci, _, ci_groups = self.interval(stat)
            v = verdict(ci, None, alpha)
            if name == "gap":  # the signed gap (English minus the rest): lower is the goal
                v = {BETTER: GAP_UP, WORSE: GAP_DOWN}.get(v, SAME)
            rows[name] = {"a": va, "b": vb, "diff": vb - va, "ci": ci, "verdict": v}
            if len(self.a) > 1:
                rows[name]["ci_groups_only"] = ci_groups
        return rows


def compare_runs(a: Union[Run, Sequence[Run]], b: Union[Run, Sequence[Run]], *, n_resamples: int = 2000,
                 seed: int = 0, alpha: float = 0.05, level: float = 0.95,
                 kinds: Optional[dict[str, str]] = None, groups: Optional[set[str]] = None) -> dict:
    """The comparison of run ``b`` against baseline ``a`` (same items), as a JSON-ready dict.

    ``a`` and ``b`` may each be a list of runs, one per training seed, paired by position (the module
    docstring says what changes then). ``kinds`` maps groups to their kind of item (adds ``by_kind``);
    ``groups`` restricts the comparison to those groups.
    """
    runs_a, runs_b = ([a] if isinstance(a, Run) else list(a)), ([b] if isinstance(b, Run) else list(b))
    if not runs_a or len(runs_a) != len(runs_b):
        raise BcatError(f"compare: pairing seeds needs the same number of runs on both sides "
                        f"({len(runs_a)} and {len(runs_b)})")
    for other in runs_a[1:] + runs_b:
        check_same_items(runs_a[0], other)
    first_a, first_b = runs_a[0], runs_b[0]
    langs_info = first_b.metrics.get("languages") or first_a.metrics.get("languages") or {}
    anchor = langs_info.get("anchor", ANCHOR)
    seen = list(langs_info.get("seen", []))
    unseen = list(langs_info.get("unseen", []))
    langs = seen + unseen or sorted({l for _, l in first_a.correct})
    keys = sorted(k for k in first_a.correct if groups is None or k[0] in groups)
    n_seeds = len(runs_a)

    def matrices(runs: list[Run]) -> list[GroupMatrix]:
        return [GroupMatrix.from_items([(g, l, r.correct[(g, l)]) for g, l in keys], langs) for r in runs]

    paired = _Paired(matrices(runs_a), matrices(runs_b), n_resamples=n_resamples, seed=seed, level=level)
    per_seed_a, per_seed_b = paired.a, paired.b
    ma, mb = paired.mean_a, paired.mean_b

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
        ci, p_boot, ci_groups = paired.interval(lambda acc, c=col: acc[:, c])
        mcnemar = mcnemar_exact(b_only_a, c_only_b)
        per_lang[lang] = {
            "a": pa, "b": pb, "diff": pb - pa, "ci": ci,
            "a_only_correct": b_only_a, "b_only_correct": c_only_b, "mcnemar_p": mcnemar,
            "p": mcnemar if n_seeds == 1 else p_boot, "n": int(present.sum()), "seen": lang not in unseen,
        }
        if n_seeds > 1:
            per_lang[lang]["ci_groups_only"] = ci_groups
    for lang, p_adj in zip(per_lang, holm([r["p"] for r in per_lang.values()])):
        per_lang[lang]["p_holm"] = p_adj
        per_lang[lang]["verdict"] = verdict(per_lang[lang]["ci"], p_adj, alpha)

    stats = headline_statistics(langs, anchor, seen, unseen)
    headline = paired.headline(stats, alpha)

    per_seed = [{"a": str(ra.path), "b": str(rb.path),
                 "diff": {name: _point(mb_, stat) - _point(ma_, stat) for name, stat in stats.items()}}
                for ra, rb, ma_, mb_ in zip(runs_a, runs_b, per_seed_a, per_seed_b)]

    def side(runs: list[Run]) -> dict:
        return {"path": ", ".join(str(r.path) for r in runs), "model": runs[0].metrics.get("model"),
                "data_fingerprint": runs[0].metrics.get("data_fingerprint"), "runs": len(runs)}

    fingerprints = {r.metrics.get("data_fingerprint") for r in runs_a + runs_b}
    out = {
        "metric": HEADLINE_METRIC,
        "a": side(runs_a), "b": side(runs_b),
        "same_data_file": len(fingerprints) == 1,
        "option_differences": option_differences(first_a, first_b),
        "n_items": len(keys), "n_groups": len(ma.groups), "seeds_pooled": n_seeds,
        "interval": (f"hierarchical bootstrap: the {n_seeds} seed pairs resampled, and the groups (one draw "
                     "shared by the drawn seeds, which were all evaluated on the same groups)"
                     if n_seeds > 1 else SINGLE_SEED_NOTE),
        "rule": (f"better/worse: the paired {level:.0%} interval of B - A excludes 0 AND the Holm-adjusted p "
                 f"(over the {len(per_lang)} languages) < {alpha}; p: "
                 + ("the hierarchical bootstrap's" if n_seeds > 1 else "exact McNemar")
                 + "; headline rows: the interval alone"),
        "alpha": alpha, "bootstrap": {"resamples": n_resamples, "seed": seed, "level": level,
                                      "unit": "seed pair and group" if n_seeds > 1 else "group"},
        "languages": {"anchor": anchor, "seen": seen, "unseen": unseen},
        "language_split_differs": _split(first_a) != _split(first_b),
        "per_language": per_lang,
        "headline": headline,
        "per_seed": per_seed,
    }
    if kinds:
        out["by_kind"] = {}
        for kind in sorted(set(kinds[g] for g, _ in keys if g in kinds)):
            part = paired.rows([kinds.get(g) == kind for g in ma.groups])
            out["by_kind"][kind] = {"n_groups": len(part.mean_a.groups), "headline": part.headline(stats, alpha)}
    return out


SINGLE_SEED_NOTE = ("paired bootstrap over groups, one seed per side: it treats the trained models as fixed and "
                    "leaves training noise out (compare several seeds per side to count it)")
"""What a one-seed interval does not cover; printed under every one-seed comparison."""


def headline_statistics(langs: Sequence[str], anchor: str, seen: Sequence[str], unseen: Sequence[str], *,
                        all_non_english: bool = False) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The headline numbers that are defined for these languages, as statistics of an accuracy matrix
    (``all_non_english``: also the mean over every non-anchor language, seen and unseen)."""
    col = {l: i for i, l in enumerate(langs)}
    others = [col[l] for l in seen if l != anchor and l in col]
    unseen_cols = [col[l] for l in unseen if l in col]
    stats: dict = {}
    if anchor in col:
        stats["english"] = lambda acc: acc[:, col[anchor]]
    if others:
        stats["non_english_mean"] = mean_of_columns(others)
    if anchor in col and others:
        stats["gap"] = gap_statistic(col[anchor], others)
    if unseen_cols:
        stats["unseen_mean"] = mean_of_columns(unseen_cols)
    if all_non_english and others + unseen_cols:
        stats["all_non_english_mean"] = mean_of_columns(others + unseen_cols)
    return stats


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
    """A plain-text table of a comparison: one row per language, the headline rows, then the seed pairs
    and the kinds of item when there are several."""
    head = f"{'':<18}{'A':>7}{'B':>7}{'B-A':>8}  {'95% CI':<18}{'p':>8}{'p Holm':>8}  verdict"
    lines = [f"A = {comparison['a']['path']}", f"B = {comparison['b']['path']}",
             f"metric: {comparison['metric']} (the headline: an accepted answer and no other candidate value "
             f"in the first line)", f"interval: {comparison['interval']}", head, "-" * len(head)]
    for lang, r in comparison["per_language"].items():
        tag = lang + ("" if r["seen"] else "*")
        lines.append(f"{tag:<18}{r['a']:>7.3f}{r['b']:>7.3f}{r['diff']:>+8.3f}  {_ci(r['ci']):<18}"
                     f"{_p(r['p']):>8}{_p(r['p_holm']):>8}  {r['verdict']}")
    lines.append("-" * len(head))
    for name, r in comparison["headline"].items():
        lines.append(f"{name:<18}{r['a']:>7.3f}{r['b']:>7.3f}{r['diff']:>+8.3f}  {_ci(r['ci']):<18}"
                     f"{'':>16}  {r['verdict']}")
    lines.append(f"verdicts: {comparison['rule']}")
    if comparison["languages"]["unseen"]:
        lines.append("* unseen in training")
    if len(comparison.get("per_seed", [])) > 1:
        names = list(comparison["headline"])
        lines += ["", "B - A per seed pair:", f"{'seed pair':<12}" + "".join(f"{n:>18}" for n in names)]
        for i, pair in enumerate(comparison["per_seed"]):
            lines.append(f"{i:<12}" + "".join(f"{pair['diff'][n]:>+18.3f}" for n in names))
        lines.append(f"{'groups only':<12}" + "".join(f"{_ci(comparison['headline'][n]['ci_groups_only']):>18}"
                                                      for n in names) + "   (seeds pooled, training noise left out)")
    if comparison.get("by_kind"):
        names = [n for n in ("english", "non_english_mean", "unseen_mean") if n in comparison["headline"]]
        lines += ["", "B - A by kind of item (95% CI):", f"{'kind':<14}{'groups':>7}" + "".join(f"{n:>26}" for n in names)]
        for kind, part in comparison["by_kind"].items():
            cells = "".join(f"{part['headline'][n]['diff']:>+8.3f} {_ci(part['headline'][n]['ci']):>17}"
                            if n in part["headline"] else f"{'n/a':>26}" for n in names)
            lines.append(f"{kind:<14}{part['n_groups']:>7}{cells}")
    if comparison.get("language_split_differs"):
        lines.append("note: the runs split seen/unseen languages differently; B's split is used")
    if not comparison["same_data_file"]:
        lines.append("note: the data files differ (same item keys, different fingerprints)")
    for option, (va, vb) in comparison.get("option_differences", {}).items():
        lines.append(f"note: evaluated with different --{option.replace('_', '-')}: A {va}, B {vb}")
    return "\n".join(lines)


def _p(p: Optional[float]) -> str:
    return "n/a" if p is None else f"{p:.4f}"


def kinds_for(run: Run, data: Optional[str | Path] = None) -> Optional[dict[str, str]]:
    """The ``kind`` of each group, from ``data`` or else from the data file the run was evaluated on
    (when it is still there with the same content); ``None`` when neither is available."""
    path = Path(data) if data else Path(run.metrics.get("data") or "")
    if not data and (not path.is_file() or file_sha256(path) != run.metrics.get("data_fingerprint")):
        return None
    return group_kinds(path) or None


@dataclass(kw_only=True)
class CompareOptions(BootstrapOptions):
    """What ``bcat compare`` does, as a Python call: :func:`run_compare`."""

    runs_a: list[str]
    """Baseline eval directories, one per training seed (paired with ``runs_b`` by position)."""
    runs_b: list[str]
    """Eval directories to judge against the baseline."""
    output: str
    """Directory for ``comparison.json``."""
    alpha: float = 0.05
    """Significance level of the per-language verdicts (Holm-adjusted)."""
    data: Optional[str] = None
    """The evaluated data file, for the breakdown by the records' ``kind`` (``None``: the file named in the
    first baseline run's ``metrics.json``, if it is there unchanged)."""


def run_compare(options: CompareOptions) -> dict:
    """Everything ``bcat compare`` does: compare, write ``comparison.json``, print the table."""
    runs_a, runs_b = [load_run(p) for p in options.runs_a], [load_run(p) for p in options.runs_b]
    comparison = compare_runs(runs_a, runs_b, n_resamples=options.bootstrap, seed=options.seed, alpha=options.alpha,
                              kinds=kinds_for(runs_a[0], options.data))
    out_dir = Path(options.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(comparison, ensure_ascii=False, indent=2) + "\n",
                                             encoding="utf-8")
    print(format_table(comparison))
    return comparison
