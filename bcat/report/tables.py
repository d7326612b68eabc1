"""The report's tables: the runs, the headline, accuracy and answer quality per language, verdicts, OOD.

Each table is a :class:`Table`, rendered to Markdown and to HTML by :mod:`bcat.report.render`.
"""

from __future__ import annotations

import html
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence

from bcat.evaluation.compare import Run

# --- tables --------------------------------------------------------------------------------------

@dataclass
class Table:
    """A table rendered to both Markdown and HTML. ``notes`` go under it."""

    headers: list[str]
    rows: list[list[str]]
    notes: str = ""

    def markdown(self) -> str:
        out = ["| " + " | ".join(h.replace("\n", " ") for h in self.headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(self.headers) - 1)) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(out) + (f"\n\n{self.notes}" if self.notes else "")

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h).replace(chr(10), '<br>')}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(_cell(c, i) for i, c in enumerate(row)) + "</tr>" for row in self.rows)
        notes = f'<p class="note">{html.escape(self.notes)}</p>' if self.notes else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def _cell(text: str, index: int) -> str:
    verdict_class = {"better": "good", "gap decreased": "good", "worse": "bad", "gap increased": "bad",
                     "no significant change": "neutral"}.get(text)
    if verdict_class:
        return f'<td><span class="pill {verdict_class}">{html.escape(text)}</span></td>'
    kind = "label" if index == 0 else "num" if text[:1] in "0123456789+-[" else "text"
    return f'<td class="{kind}">{html.escape(text)}</td>'


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


def language_name(code: str) -> str:
    """English name of a language code, from CLDR (babel); the code itself when unknown."""
    try:
        from babel import Locale

        return Locale("en").languages.get(code, code)
    except Exception:  # noqa: BLE001 - a name is decoration, never an error
        return code


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


def headline_table(runs: Sequence[Run], names: Sequence[str]) -> Table:
    rows = []
    for run, name in zip(runs, names):
        m, ci = run.metrics, run.metrics.get("ci", {})
        rows.append([name] + [f"{fmt(m.get(k), signed=k == 'gap')} {fmt_ci(ci.get(k), signed=k == 'gap')}".strip()
                              for k in ("english", "non_english_mean", "gap", "unseen_mean", "all_languages_correct")])
    return Table(["run", "English", "non-English (seen)", "gap", "unseen", "all seen correct"], rows,
                 "95% percentile bootstrap intervals over groups. gap = English - mean of the seen non-English "
                 "languages. 'all seen correct': share of groups answered correctly in every seen language.")


def accuracy_table(runs: Sequence[Run], names: Sequence[str], langs: Sequence[str], unseen: set[str]) -> Table:
    rows = []
    for lang in langs:
        row = [f"{lang} {language_name(lang)}" + (" (unseen)" if lang in unseen else "")]
        for run in runs:
            v = run.metrics.get("per_language", {}).get(lang, {})
            ci = run.metrics.get("ci", {}).get("per_language", {}).get(lang)
            row.append(f"{fmt(v.get('accuracy'))} {fmt_ci(ci)}".strip() if v else "-")
        row.append(str(max((r.metrics.get("per_language", {}).get(lang, {}).get("n", 0) for r in runs), default=0)))
        rows.append(row)
    return Table(["language"] + list(names) + ["n"], rows)


def quality_table(runs: Sequence[Run], names: Sequence[str], langs: Sequence[str]) -> Table:
    metrics = [("chrf3_recall", "chrF3 recall"), ("answer_language_rate", "answer language"),
               ("consistency_with_en", "consistency with en")]
    headers = ["language"] + [f"{label}\n{name}" for _, label in metrics for name in names]
    rows = []
    for lang in langs:
        per = [run.metrics.get("per_language", {}).get(lang, {}) for run in runs]
        rows.append([lang] + [fmt(v.get(key)) for key, _ in metrics for v in per])
    return Table(headers, rows, "chrF3 recall: share of the answer's character 3-grams in the prediction. Answer "
                 "language: share of predictions written in the question's language (lingua; answer-neutral "
                 "items and predictions without letters skipped). Consistency: share of groups where the "
                 "language and English are both right or both wrong.")


def verdict_table(comparison: dict, names: Sequence[str]) -> Table:
    rows = []
    for lang, r in comparison["per_language"].items():
        rows.append([lang + ("" if r["seen"] else " (unseen)"), fmt(r["a"]), fmt(r["b"]), fmt(r["diff"], signed=True),
                     fmt_ci(r["ci"], signed=True), f"{r['mcnemar_p']:.4f}", r["verdict"]])
    for key, r in comparison["headline"].items():
        rows.append([key.replace("_", " "), fmt(r["a"]), fmt(r["b"]), fmt(r["diff"], signed=True),
                     fmt_ci(r["ci"], signed=True), "", r["verdict"]])
    return Table(["", names[0], names[1], "diff", "95% CI (paired)", "McNemar p", "verdict"], rows,
                 f"Rule: {comparison['rule']}.")


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
            rows.append([f"{key} {language_name(key)}" if key != language_name(key) else key]
                        + [fmt(c.get(m), digits[m]) for m in metrics for c in cells]
                        + [str(max((c.get("n", 0) for c in cells if _is_number(c.get("n", 0))), default=0))])
        if rows or notes:
            out.append((task, Table(headers, rows, " ".join(notes)) if rows else " ".join(notes)))
    return out
