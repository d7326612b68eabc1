"""The report's tables: the runs, the headline (strict accuracy), accuracy per language, the other
scorers, answer language and agreement with English, verdicts, example answers, OOD.

Each table is a :class:`Table`: Markdown from :meth:`Table.markdown`, HTML from its :meth:`Table.cells`
through the report's template (:mod:`bcat.report.render`).
"""

from __future__ import annotations

import numbers
import unicodedata
from dataclasses import dataclass
from typing import Optional, Sequence

from bcat.evaluation.compare import Run
from bcat.languages import language_label

# --- tables --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One body cell as the HTML report shows it."""

    text: str
    kind: str
    """CSS classes of the cell: ``label`` (first column), ``num``, ``text``, plus ``nowrap``."""
    pill: Optional[str] = None
    """A verdict's colour (``good``, ``bad``, ``neutral``): the text is shown as a pill."""


@dataclass
class Table:
    """A table rendered to both Markdown and HTML. ``notes`` go under it."""

    headers: list[str]
    rows: list[list[str]]
    notes: str = ""
    text_columns: tuple[int, ...] = ()
    """Columns of free text (wrapped, left-aligned), whatever they start with."""
    nowrap_columns: tuple[int, ...] = ()
    """Columns of short text never broken across lines (model codes, gold answers)."""

    def markdown(self) -> str:
        out = ["| " + " | ".join(h.replace("\n", " ") for h in self.headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(self.headers) - 1)) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(out) + (f"\n\n{self.notes}" if self.notes else "")

    def cells(self) -> list[list[Cell]]:
        """The body rows as the HTML report shows them."""
        return [[_cell(c, i, i in self.text_columns, i in self.nowrap_columns) for i, c in enumerate(row)]
                for row in self.rows]


def verdict_class(text: str) -> Optional[str]:
    """The pill colour of a verdict cell (a comparison verdict or an answer's), ``None`` for other text.

    >>> verdict_class("better"), verdict_class("correct"), verdict_class("also names 12 Monate"), verdict_class("24")
    ('good', 'good', 'bad', None)
    """
    fixed = {"better": "good", "gap decreased": "good", "worse": "bad", "gap increased": "bad",
             "no significant change": "neutral", CORRECT: "good", WRONG: "bad", EMPTY: "bad"}
    if text in fixed:
        return fixed[text]
    return "bad" if text.startswith((ALSO_NAMES, WRONG_VALUE)) else None


def _cell(text: str, index: int, free_text: bool = False, nowrap: bool = False) -> Cell:
    pill = verdict_class(text)
    if pill:
        return Cell(text, "", pill)
    kind = "text" if free_text else "label" if index == 0 else "num" if text[:1] in "0123456789+-[" else "text"
    return Cell(text, kind + (" nowrap" if nowrap else ""))


def fmt(x, digits: int = 3, signed: bool = False) -> str:
    """A number for a table; ``-`` for missing values.

    >>> fmt(0.5), fmt(None), fmt(0.1234, signed=True)
    ('0.500', '-', '+0.123')
    """
    if x is None or not isinstance(x, numbers.Number):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_ci(ci: Optional[Sequence[float]], signed: bool = False) -> str:
    return f"[{fmt(ci[0], signed=signed)}, {fmt(ci[1], signed=signed)}]" if ci else ""


def language_cell(code: str, unseen: bool = False) -> str:
    """A language as every table and chart of the report names it (:func:`bcat.languages.language_label`),
    marked when unseen in training.

    >>> language_cell("pt-BR"), language_cell("th", unseen=True)
    ('pt-BR Portuguese (Brazil)', 'th Thai (unseen)')
    """
    return language_label(code) + (" (unseen)" if unseen else "")


# --- runs ----------------------------------------------------------------------------------------

def run_names(runs: Sequence[Run]) -> list[str]:
    """Short distinct names: the directory name, with parents added until names are unique."""
    depth = 1
    while True:
        names = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names) or depth > 6:
            return names
        depth += 1


def all_languages(runs: Sequence[Run]) -> tuple[list[str], set[str]]:
    """Union of languages in report order (seen first, then unseen) and the set of unseen ones."""
    seen: list[str] = []
    unseen: list[str] = []
    for r in runs:
        info = r.metrics.get("languages", {})
        seen += [l for l in info.get("seen", []) if l not in seen]
        unseen += [l for l in info.get("unseen", []) if l not in unseen]
    seen = [l for l in seen if l not in unseen]
    return seen + unseen, set(unseen)


# --- sections ------------------------------------------------------------------------------------

def runs_table(runs: Sequence[Run], names: Sequence[str]) -> Table:
    rows = []
    for run, name in zip(runs, names):
        m = run.metrics
        opts = m.get("options", {})
        rows.append([name, str(m.get("model", "-")), str(len(m.get("items", [])) or "-"), str(m.get("n_groups", "-")),
                     str(m.get("prompt_format", "-")), str(opts.get("shots", "-")),
                     (m.get("data_fingerprint") or "-")[:12]])
    return Table(["run", "model", "items", "groups", "prompt", "shots", "data sha256"], rows)


STRICT_NOTE = ("Strict accuracy (the headline metric): the first line of the answer names an accepted answer "
               "and no other candidate value of the item (another passage's value, the unsupported value, a "
               "comparison's other option).")


def headline_table(runs: Sequence[Run], names: Sequence[str]) -> Table:
    rows = []
    for run, name in zip(runs, names):
        m, ci = run.metrics, run.metrics.get("ci", {})
        rows.append([name] + [f"{fmt(m.get(k), signed=k == 'gap')} {fmt_ci(ci.get(k), signed=k == 'gap')}".strip()
                              for k in ("english", "non_english_mean", "gap", "unseen_mean", "all_languages_correct")])
    return Table(["run", "English", "non-English (seen)", "gap", "unseen", "all seen correct"], rows,
                 STRICT_NOTE + " 95% percentile bootstrap intervals over groups. gap = English - mean of the seen "
                 "non-English languages. 'all seen correct': share of groups answered correctly in every seen "
                 "language.")


def scorer_table(runs: Sequence[Run], names: Sequence[str]) -> Table:
    """The headline numbers under every scorer, so a reader sees how much the scorer decides."""
    scorers = [("strict_accuracy", "strict accuracy (headline)"), ("contains_accuracy", "contains"),
               ("exact_match", "exact match"), ("chrf", "chrF (beta=1)")]
    keys = ("english", "non_english_mean", "gap", "unseen_mean")
    rows = []
    for run, name in zip(runs, names):
        m = run.metrics
        for key, label in scorers:
            values = m if key == m.get("headline_metric", "strict_accuracy") else (m.get("secondary") or {}).get(key)
            if values:
                rows.append([f"{name}: {label}"] + [fmt(values.get(k), signed=k == "gap") for k in keys])
    return Table(["run: scorer", "English", "non-English (seen)", "gap", "unseen"], rows,
                 "contains: an accepted answer occurs in the first line, whatever else it says (lenient: listing values passes). "
                 "exact match: the whole normalised first line is an accepted answer. chrF: character 1-6-gram "
                 "F-score with precision and recall weighted equally (sacrebleu), against the closest accepted "
                 "answer. Only strict accuracy has intervals and verdicts.")


def accuracy_table(runs: Sequence[Run], names: Sequence[str], langs: Sequence[str], unseen: set[str]) -> Table:
    rows = []
    for lang in langs:
        row = [language_cell(lang, lang in unseen)]
        for run in runs:
            v = run.metrics.get("per_language", {}).get(lang, {})
            ci = run.metrics.get("ci", {}).get("per_language", {}).get(lang)
            row.append(f"{fmt(v.get('strict_accuracy'))} {fmt_ci(ci)}".strip() if v else "-")
        row.append(str(max((r.metrics.get("per_language", {}).get(lang, {}).get("n", 0) for r in runs), default=0)))
        rows.append(row)
    return Table(["language"] + [f"strict accuracy\n{name}" for name in names] + ["n"], rows,
                 STRICT_NOTE + " 95% bootstrap intervals over groups.")


def _per_language_table(runs, names, langs, metrics, notes, unseen: frozenset = frozenset()) -> Table:
    headers = ["language"] + [f"{label}\n{name}" for _, label in metrics for name in names]
    rows = []
    for lang in langs:
        per = [run.metrics.get("per_language", {}).get(lang, {}) for run in runs]
        rows.append([language_cell(lang, lang in unseen)] + [fmt(v.get(key)) for key, _ in metrics for v in per])
    return Table(headers, rows, notes)


def scorers_per_language_table(runs: Sequence[Run], names: Sequence[str], langs: Sequence[str],
                               unseen: frozenset = frozenset()) -> Table:
    return _per_language_table(
        runs, names, langs, [("contains_accuracy", "contains"), ("exact_match", "exact"), ("chrf", "chrF"),
                             ("names_wrong_value_rate", "names a wrong value")],
        "Secondary scorers (strict accuracy is the headline). 'names a wrong value': share of first lines that "
        "name another candidate value of the item (a strict-accuracy zero even when the answer is there too).",
        unseen)


def agreement_table(runs: Sequence[Run], names: Sequence[str], langs: Sequence[str],
                    unseen: frozenset = frozenset()) -> Table:
    unmeasured = "".join(f" Answer language of {name}: {run.metrics['answer_language']}."
                         for run, name in zip(runs, names) if run.metrics.get("answer_language"))
    return _per_language_table(
        runs, names, langs, [("answer_language_rate", "answer language"), ("both_correct_with_en", "both correct"),
                             ("same_correctness_as_en", "same correctness"), ("same_answer_as_en", "same answer")],
        "Answer language: share of predictions written in the question's language (lingua; answer-neutral items "
        "and predictions without letters skipped). Agreement with English, over the groups that have both: both "
        "strictly correct; the same correctness (both right or both wrong); the same answer (the accepted answer, "
        "the same wrong value, or equal normalised text)." + unmeasured, unseen)


# --- example answers -----------------------------------------------------------------------------

CORRECT, WRONG, EMPTY = "correct", "wrong", "empty"
ALSO_NAMES, WRONG_VALUE = "also names ", "wrong value: "


def answer_verdict(rec: dict) -> str:
    """What happened to one answer, from its ``predictions.jsonl`` record.

    >>> answer_verdict({"strict_correct": False, "contains_answer": True, "named_wrong_values": ["KT-2"], "prediction": "x"})
    'also names KT-2'
    """
    if rec.get("strict_correct"):
        return CORRECT
    named = rec.get("named_wrong_values") or []
    if named:
        return (ALSO_NAMES if rec.get("contains_answer") else WRONG_VALUE) + named[0]
    return EMPTY if not rec.get("prediction") else WRONG


def _clip(text: str, limit: int = 140) -> str:
    """``text`` cut to ``limit`` characters, control characters shown as escapes (a model can emit them).

    >>> _clip("ab\\x04c", 10), _clip("x" * 12, 10)
    ('ab\\\\x04c', 'xxxxxxxxx…')
    """
    text = "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pick_examples(records: Sequence[dict[tuple[str, str], dict]], lang: str, k: int = 3) -> list[str]:
    """Up to ``k`` groups of ``lang`` to show, the same for every run: first those whose verdict
    changed from the first run to the last (fixed, then broken), then the rest, in group order."""
    keys = [g for (g, l) in records[0] if l == lang and all((g, l) in r for r in records)]
    first, last = records[0], records[-1]

    def rank(g):
        a, b = bool(first[(g, lang)].get("strict_correct")), bool(last[(g, lang)].get("strict_correct"))
        return (0 if b and not a else 1 if a and not b else 2, g)

    return sorted(keys, key=rank)[:k]


def examples_table(records: Sequence[dict[tuple[str, str], dict]], names: Sequence[str], lang: str,
                   k: int = 3) -> Optional[Table]:
    """Question, gold answer, and each run's answer and verdict, for a few items of ``lang``."""
    groups = pick_examples(records, lang, k)
    if not groups:
        return None
    rows = []
    for g in groups:
        rec = records[0][(g, lang)]
        row = [g, _clip(rec.get("question") or "-"), (rec.get("answers") or ["-"])[0]]
        for r in records:
            row += [_clip(r[(g, lang)].get("prediction") or ""), answer_verdict(r[(g, lang)])]
        rows.append(row)
    headers = ["group", "question", "gold"] + [h for name in names for h in (f"answer\n{name}", f"verdict\n{name}")]
    return Table(headers, rows, text_columns=tuple(range(1, len(headers))), nowrap_columns=(2,))


def verdict_table(comparison: dict, names: Sequence[str]) -> Table:
    rows = []
    for lang, r in comparison["per_language"].items():
        rows.append([language_cell(lang, not r["seen"]), fmt(r["a"]), fmt(r["b"]), fmt(r["diff"], signed=True),
                     fmt_ci(r["ci"], signed=True), fmt(r["p"], 4), fmt(r["p_holm"], 4), r["verdict"]])
    for key, r in comparison["headline"].items():
        rows.append([key.replace("_", " "), fmt(r["a"]), fmt(r["b"]), fmt(r["diff"], signed=True),
                     fmt_ci(r["ci"], signed=True), "", "", r["verdict"]])
    return Table(["", names[0], names[1], "diff", "95% CI (paired)", "p", "p (Holm)", "verdict"], rows,
                 f"Metric: {comparison.get('metric', 'strict_accuracy')} (the headline). Interval: "
                 f"{comparison['interval']}. Rule: {comparison['rule']}.")


def seed_pairs_table(comparison: dict, names: Sequence[str]) -> Table:
    """B - A for each seed pair, and the seeds-pooled groups-only interval under them."""
    keys = list(comparison["headline"])
    rows = [[f"seed pair {i}"] + [fmt(pair["diff"][k], signed=True) for k in keys]
            for i, pair in enumerate(comparison["per_seed"])]
    rows.append(["seed-aware 95% CI"] + [fmt_ci(comparison["headline"][k]["ci"], signed=True) for k in keys])
    rows.append(["groups-only 95% CI"] + [fmt_ci(comparison["headline"][k].get("ci_groups_only"), signed=True)
                                          for k in keys])
    return Table([f"{names[1]} - {names[0]}"] + [k.replace("_", " ") for k in keys], rows,
                 "Each seed pair's own difference; the seed-aware interval resamples seed pairs and groups; the "
                 "groups-only interval pools the seeds and treats the trained models as fixed.")


def kind_table(comparison: dict, names: Sequence[str]) -> Table:
    """B - A per kind of item (the data's ``kind`` field), with the comparison's intervals."""
    keys = [k for k in ("english", "non_english_mean", "unseen_mean") if k in comparison["headline"]]
    rows = [[kind, str(part["n_groups"])]
            + [(fmt(part["headline"][k]["diff"], signed=True) + " " + fmt_ci(part["headline"][k]["ci"], signed=True))
               if k in part["headline"] else "-" for k in keys]
            for kind, part in comparison["by_kind"].items()]
    return Table(["kind", "groups"] + [f"{k.replace('_', ' ')}\n{names[1]} - {names[0]}" for k in keys], rows,
                 "Per kind of item: the difference and its 95% interval (as in the table above).")


def _is_number(x) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def ood_tables(runs: Sequence[Run], names: Sequence[str]) -> list[tuple[str, Table]]:
    """One table per OOD task: a row per language, a column per (metric, run).

    A task's results are ``{lang: {metric: value}}`` plus task-level entries (``"layer": 9``,
    ``"skipped": "reason"``), which go into the note under the table.
    """
    tasks: list[str] = []
    for r in runs:
        tasks += [t for t in (r.metrics.get("ood") or {}) if t not in tasks]
    out = []
    for task in tasks:
        results = [(r.metrics.get("ood") or {}).get(task) or {} for r in runs]
        rows_keys = list(dict.fromkeys(k for res in results for k, v in res.items() if isinstance(v, dict)))
        metrics = list(dict.fromkeys(m for res in results for k in rows_keys for m, v in (res.get(k) or {}).items()
                                     if _is_number(v) and m != "n"))
        extras = ["; ".join(f"{k}: {v}" for k, v in res.items() if not isinstance(v, dict)) for res in results]
        if len(set(extras)) == 1:  # the same for every run: say it once
            notes = [extras[0]] if extras[0] else []
        else:
            notes = [f"{name}: {e}" for name, e in zip(names, extras) if e]
        headers = ["language"] + [f"{m}\n{name}" if len(runs) > 1 else m for m in metrics for name in names] + ["n"]
        rows = []
        for key in rows_keys:
            cells = [res.get(key) or {} for res in results]
            digits = {m: 2 if m == "ppl" else 3 for m in metrics}
            rows.append([language_cell(key)]
                        + [fmt(c.get(m), digits[m]) for m in metrics for c in cells]
                        + [str(max((c.get("n", 0) for c in cells if _is_number(c.get("n", 0))), default=0))])
        if rows or notes:
            out.append((task, Table(headers, rows, " ".join(notes)) if rows else " ".join(notes)))
    return out
