"""``bcat report DIR...``: a Markdown and a self-contained HTML report of one or more eval runs.

The report holds: the runs; the headline (English, seen non-English mean, gap, unseen mean, with
95% intervals) and its chart; with exactly two runs, the ``bcat compare`` verdict table; accuracy
per language side by side (unseen languages marked); answer quality per language (chrF3 recall,
answer-language rate, consistency with English); and the out-of-domain results when present.

``report.html`` embeds its charts as base64 PNG (one file to attach to a review); ``report.md``
links the same PNG files, written next to it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bcat.errors import BcatError
from bcat.evaluation.compare import BETTER, WORSE, Run, compare_runs, load_run

PALETTE = ["#3b6ea5", "#e07b39", "#4f9a5d", "#c44e52", "#8172b3", "#937860"]


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


# --- charts --------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.alpha": 0.3, "axes.axisbelow": True})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _err(value, ci):
    if value is None or not ci:
        return [[0], [0]]
    return [[max(value - ci[0], 0)], [max(ci[1] - value, 0)]]


def per_language_chart(runs: Sequence[Run], names: Sequence[str], langs: Sequence[str], unseen: set[str],
                       metric: str, ylabel: str, with_ci: bool) -> bytes:
    """Grouped bars: one group per language, one bar per run; unseen languages on a shaded band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(langs) * max(1, len(runs)) ** 0.5 + 2), 3.6))
    width = 0.8 / max(1, len(runs))
    first_unseen = next((i for i, l in enumerate(langs) if l in unseen), None)
    if first_unseen is not None:
        ax.axvspan(first_unseen - 0.5, len(langs) - 0.5, color="#f1ede4", zorder=0)
        ax.text((first_unseen + len(langs) - 1) / 2, 1.07, "unseen in training", ha="center", va="bottom",
                fontsize=9, color="#7a6a4f")
    for k, (run, name) in enumerate(zip(runs, names)):
        per = run.metrics.get("per_language", {})
        cis = run.metrics.get("ci", {}).get("per_language", {})
        labelled = False
        for i, lang in enumerate(langs):
            value = per.get(lang, {}).get(metric)
            if value is None:
                continue
            ax.bar(i - 0.4 + width * (k + 0.5), value, width * 0.92, color=PALETTE[k % len(PALETTE)],
                   label=None if labelled else name, yerr=_err(value, cis.get(lang)) if with_ci else None,
                   capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "#333"})
            labelled = True
    ax.set_xticks(range(len(langs)), [f"{l}\n{language_name(l)}" for l in langs], fontsize=8.5)
    ax.set_xlim(-0.6, len(langs) - 0.4)
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(4, len(runs)), frameon=False)
    return _png(fig)


def headline_chart(runs: Sequence[Run], names: Sequence[str]) -> bytes:
    """Left: English, seen non-English mean and unseen mean per run. Right: the gap per run, with CIs."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1.5, 1]})
    keys = [("english", "English"), ("non_english_mean", "non-English\n(seen, mean)"), ("unseen_mean", "unseen\n(mean)")]
    width = 0.8 / len(runs)
    for k, (run, name) in enumerate(zip(runs, names)):
        ci = run.metrics.get("ci", {})
        for i, (key, _) in enumerate(keys):
            value = run.metrics.get(key)
            if value is None:
                continue
            left.bar(i - 0.4 + width * (k + 0.5), value, width * 0.92, color=PALETTE[k % len(PALETTE)],
                     yerr=_err(value, ci.get(key)), capsize=3, label=name if i == 0 else None,
                     error_kw={"elinewidth": 0.8, "ecolor": "#333"})
    left.set_xticks(range(len(keys)), [label for _, label in keys])
    left.set_ylim(0, 1.05)
    left.set_ylabel("accuracy")
    left.set_title("Accuracy", fontsize=10, loc="left")
    left.legend(frameon=False, fontsize=8.5, loc="upper right")
    ys = list(range(len(runs)))[::-1]
    for y, (k, (run, name)) in zip(ys, enumerate(zip(runs, names))):
        gap = run.metrics.get("gap")
        if gap is None:
            continue
        ci = run.metrics.get("ci", {}).get("gap")
        right.errorbar(gap, y, xerr=_err(gap, ci), fmt="o", color=PALETTE[k % len(PALETTE)], capsize=4, ms=7)
        right.annotate(f"{gap:+.3f}", (gap, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8.5)
    right.axvline(0, color="#555", lw=0.8)
    ends = [0.0] + [v for r in runs if r.metrics.get("gap") is not None
                    for v in (r.metrics.get("ci", {}).get("gap") or [r.metrics["gap"]] * 2) + [r.metrics["gap"]]]
    pad = max(0.02, 0.12 * (max(ends) - min(ends)))
    right.set_xlim(min(ends) - pad, max(ends) + pad)
    from matplotlib.ticker import MaxNLocator

    right.xaxis.set_major_locator(MaxNLocator(nbins=5))
    right.set_yticks(ys, names)
    right.set_ylim(-0.7, len(runs) - 0.3)
    right.set_xlabel("English - non-English mean (95% CI)")
    right.set_title("Gap: English minus non-English (lower is better)", fontsize=10, loc="left")
    fig.tight_layout()
    return _png(fig)


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


# --- documents -----------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'Noto Sans',Helvetica,Arial,sans-serif;color:#1f2328;
max-width:1100px;margin:32px auto;padding:0 24px;line-height:1.45}
h1{font-size:26px;margin-bottom:4px} h2{font-size:19px;margin-top:36px;border-bottom:1px solid #d8dee4;padding-bottom:6px}
h3{font-size:15px;margin-top:22px} .meta{color:#59636e;font-size:13px;margin-top:0}
table{border-collapse:collapse;margin:12px 0;font-size:13.5px}
th,td{padding:6px 12px;border-bottom:1px solid #e4e8ec} th{background:#f6f8fa;text-align:left;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} td.label{font-weight:500;white-space:nowrap}
tbody tr:hover{background:#f9fbfd} .note{color:#59636e;font-size:12.5px;max-width:900px}
img{max-width:100%;border:1px solid #e4e8ec;border-radius:6px;padding:6px;background:#fff}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.good{background:#dafbe1;color:#116329} .bad{background:#ffebe9;color:#a40e26} .neutral{background:#eef1f4;color:#59636e}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #d8dee4;border-radius:8px;padding:10px 16px;min-width:170px}
.card .k{font-size:12px;color:#59636e} .card .v{font-size:22px;font-weight:600} .card .c{font-size:12px;color:#59636e}
"""


def _cards(runs: Sequence[Run], names: Sequence[str]) -> str:
    """One card per run with its gap, the headline number."""
    out = []
    for run, name in zip(runs, names):
        gap, ci = run.metrics.get("gap"), run.metrics.get("ci", {}).get("gap")
        out.append(f'<div class="card"><div class="k">{html.escape(name)}: gap</div>'
                   f'<div class="v">{fmt(gap, signed=True)}</div><div class="c">95% CI {fmt_ci(ci, signed=True)}</div></div>')
    return f'<div class="cards">{"".join(out)}</div>'


def build_report(run_dirs: Sequence[str | Path], output: str | Path, *, n_resamples: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the chart PNGs into ``output``; return the two report paths."""
    if not run_dirs:
        raise BcatError("report: give at least one eval directory")
    runs = [load_run(d, need_items=False) for d in run_dirs]
    names = run_names(runs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    langs, unseen = all_languages(runs)
    rag_runs = [r for r in runs if r.metrics.get("per_language")]

    sections: list[tuple[str, list]] = []  # (title, parts); a part is a Table, (png name, bytes, alt) or str
    sections.append(("Runs", [runs_table(runs, names)]))
    if rag_runs:
        sections.append(("Headline", ["cards", headline_table(runs, names),
                                      ("headline.png", headline_chart(runs, names), "headline accuracy and gap")]))
        if len(runs) == 2:
            sections.append(("Comparison", _comparison_parts(runs, names, n_resamples, seed, alpha)))
        sections.append(("Accuracy per language", [
            ("accuracy.png", per_language_chart(runs, names, langs, unseen, "accuracy", "accuracy", True),
             "accuracy per language"), accuracy_table(runs, names, langs, unseen)]))
        sections.append(("Answer language and quality", [
            ("answer_language.png", per_language_chart(runs, names, langs, unseen, "answer_language_rate",
                                                       "answer-language rate", False), "answer-language rate"),
            quality_table(runs, names, langs)]))
    ood = ood_tables(runs, names)
    if ood:
        sections.append(("Out-of-domain", ["Retention checks outside RAG QA (bcat.evaluation.ood): compare a "
                                           "tuned model with its base, language by language."]
                         + [part for task, table in ood for part in (f"### {task}", table)]))

    md_path, html_path = output / "report.md", output / "report.html"
    md_path.write_text(_markdown(sections, runs, names), encoding="utf-8")
    html_path.write_text(_html(sections, runs, names), encoding="utf-8")
    for _, parts in sections:
        for part in parts:
            if isinstance(part, tuple):
                (output / part[0]).write_bytes(part[1])
    return md_path, html_path


def _comparison_parts(runs, names, n_resamples, seed, alpha) -> list:
    try:
        a, b = load_run(runs[0].path), load_run(runs[1].path)
        comparison = compare_runs(a, b, n_resamples=n_resamples, seed=seed, alpha=alpha)
    except BcatError as e:
        return [f"No comparison: {e}"]
    better = [l for l, r in comparison["per_language"].items() if r["verdict"] == BETTER]
    worse = [l for l, r in comparison["per_language"].items() if r["verdict"] == WORSE]
    summary = (f"{names[1]} against {names[0]} on {comparison['n_items']} items ({comparison['n_groups']} groups): "
               f"better in {', '.join(better) or 'no language'}; worse in {', '.join(worse) or 'no language'}.")
    return [summary, verdict_table(comparison, names)]


def _title(names) -> str:
    return "bcat evaluation: " + (" vs ".join(names) if len(names) <= 3 else f"{len(names)} runs")


def _markdown(sections, runs, names) -> str:
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = [f"# {_title(names)}", "", f"Generated {now} by `bcat report`.", ""]
    for title, parts in sections:
        out += [f"## {title}", ""]
        for part in parts:
            if part == "cards":
                continue
            if isinstance(part, Table):
                out += [part.markdown(), ""]
            elif isinstance(part, tuple):
                out += [f"![{part[2]}]({part[0]})", ""]
            else:
                out += [part, ""]
    return "\n".join(out)


def _html(sections, runs, names) -> str:
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{html.escape(_title(names))}</h1>", f'<p class="meta">Generated {now} by <code>bcat report</code>.</p>']
    for title, parts in sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        for part in parts:
            if part == "cards":
                body.append(_cards(runs, names))
            elif isinstance(part, Table):
                body.append(part.html())
            elif isinstance(part, tuple):
                data = base64.b64encode(part[1]).decode("ascii")
                body.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(part[2])}">')
            elif part.startswith("### "):
                body.append(f"<h3>{html.escape(part[4:])}</h3>")
            else:
                body.append(f"<p>{html.escape(part)}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(_title(names))}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def run_report(args) -> tuple[Path, Path]:
    """Everything ``bcat report`` does."""
    output = args.output or (args.runs[0] if len(args.runs) == 1 else "report")
    md, page = build_report(args.runs, output, n_resamples=args.bootstrap, seed=args.seed, alpha=args.alpha)
    print(f"wrote {md} and {page}")
    return md, page
