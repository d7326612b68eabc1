"""``bcat report DIR...``: a Markdown and a self-contained HTML report of one or more eval runs.

The report holds: the runs; the headline in STRICT accuracy (English, seen non-English mean, gap,
unseen mean, with 95% intervals) and its chart, and the same numbers under the other scorers;
with exactly two runs, the ``bcat compare`` verdict table; strict accuracy per language side by
side (unseen languages marked); the other scorers per language; answer language and agreement
with English; a few example answers per language in every run (question, gold, answer, verdict);
the training loss per language of the training runs (``train_run``, or found next to each
evaluated model); and the out-of-domain results when present.

``report.html`` embeds its charts as base64 PNG (one file to attach to a review); ``report.md``
links the same PNG files, written next to it.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Optional, Sequence

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

from bcat.errors import BcatError
from bcat.evaluation.compare import BETTER, WORSE, Run, compare_runs, load_run
from bcat.evaluation.scoring import BootstrapOptions, check_metrics
from bcat.output import claim_output, replace_dir
from bcat.report.charts import headline_chart, loss_chart, per_language_chart
from bcat.report.loss import training_logs
from bcat.report.tables import (
    STRICT_NOTE,
    Table,
    accuracy_table,
    agreement_table,
    all_languages,
    examples_table,
    fmt,
    fmt_ci,
    headline_table,
    language_cell,
    ood_tables,
    run_names,
    runs_table,
    scorer_table,
    scorers_per_language_table,
    verdict_table,
)

# --- documents -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Card:
    """A run's headline number, shown above the headline table in HTML."""

    name: str
    value: str
    interval: str


def _cards(runs: Sequence[Run], names: Sequence[str]) -> list[Card]:
    """One card per run with its gap, the headline number."""
    return [Card(name, fmt(run.metrics.get("gap"), signed=True),
                 fmt_ci(run.metrics.get("ci", {}).get("gap"), signed=True)) for run, name in zip(runs, names)]


EXAMPLES_PER_LANGUAGE = 3


def build_report(run_dirs: Sequence[str | Path], output: str | Path, *, n_resamples: int = 2000, seed: int = 0,
                 alpha: float = 0.05, train_runs: Sequence[str | Path] = ()) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the chart PNGs into ``output``; return the two report paths.

    ``train_runs``: ``bcat train`` output directories whose loss curves to draw (default: those
    found next to the evaluated models)."""
    if not run_dirs:
        raise BcatError("report: give at least one eval directory")
    output = Path(output)
    with claim_output(output, "output", replaced=True):
        sections, title, cards = _report_sections(run_dirs, n_resamples, seed, alpha, train_runs)
        replace_dir(output, lambda folder: write_document(sections, folder, title, "bcat report", cards=cards),
                    carry=True)
    return output / "report.md", output / "report.html"


def _report_sections(run_dirs, n_resamples: int, seed: int, alpha: float, train_runs) -> tuple[list, str, str]:
    """The report's sections, title and HTML cards."""
    runs = [load_run(d, need_items=False) for d in run_dirs]
    for run in runs:
        check_metrics(run.metrics, run.path / "metrics.json")
    logs = [log for log in training_logs(runs, [str(d) for d in train_runs]) if log.entries]
    names = run_names(runs)
    langs, unseen = all_languages(runs)
    rag_runs = [r for r in runs if r.metrics.get("per_language")]

    sections: list[tuple[str, list]] = []  # (title, parts); a part is a Table, (png name, bytes, alt) or str
    sections.append(("Runs", [runs_table(runs, names)]))
    if rag_runs:
        sections.append(("Headline: strict accuracy", [
            STRICT_NOTE, "cards", headline_table(runs, names),
            ("headline.png", headline_chart(runs, names), "headline strict accuracy and gap"),
            "The same numbers under every scorer:", scorer_table(runs, names)]))
        if len(runs) == 2:
            sections.append(("Comparison", _comparison_parts(runs, names, n_resamples, seed, alpha)))
        sections.append(("Strict accuracy per language", [
            ("accuracy.png", per_language_chart(runs, names, langs, unseen, "strict_accuracy", "strict accuracy",
                                                True), "strict accuracy per language"),
            accuracy_table(runs, names, langs, unseen)]))
        sections.append(("Other scorers per language", [scorers_per_language_table(runs, names, langs, unseen)]))
        sections.append(("Answer language and agreement with English", [
            ("answer_language.png", per_language_chart(runs, names, langs, unseen, "answer_language_rate",
                                                       "answer-language rate", False), "answer-language rate"),
            agreement_table(runs, names, langs, unseen)]))
        sections.append(("Example answers", _example_parts(rag_runs, run_names(rag_runs), langs)))
    if logs:
        sections.append(("Training loss per language", [
            "The main objective's loss per language at each logged step (train_log.jsonl; a language is "
            "plotted at the steps whose batch held it), the total loss dashed: "
            + ", ".join(str(log.path) for log in logs) + ".",
            ("training_loss.png", loss_chart(logs), "training loss per language")]))
    ood = ood_tables(runs, names)
    if ood:
        sections.append(("Out-of-domain", ["Retention checks outside RAG QA (bcat.evaluation.ood.suite): compare a "
                                           "tuned model with its base, language by language."]
                         + [part for task, table in ood for part in (f"### {task}", table)]))

    return sections, _title(names), _cards(runs, names)


def write_document(sections: list, output: Path, title: str, generator: str, stem: str = "report",
                   cards: Sequence[Card] = ()) -> tuple[Path, Path]:
    """Write ``STEM.md``, ``STEM.html`` and the charts of ``sections`` into ``output``.

    A section is ``(title, parts)``; a part is a :class:`Table`, a chart ``(png path relative to
    output, bytes, alt text)``, the string ``"cards"`` (``cards`` in HTML, nothing in Markdown) or
    Markdown text (a paragraph, a ``"### subtitle"``, a ``"- "`` list, a code block). The HTML comes
    from the ``report.html.j2`` template, every value escaped; Markdown text is rendered by
    markdown-it (CommonMark) with raw HTML disabled, so text from data cannot inject markup.
    """
    output.mkdir(parents=True, exist_ok=True)
    md_path, html_path = output / f"{stem}.md", output / f"{stem}.html"
    md_path.write_text(_markdown(sections, title, generator), encoding="utf-8")
    html_path.write_text(_html(sections, title, generator, cards), encoding="utf-8")
    for _, parts in sections:
        for part in parts:
            if isinstance(part, tuple):
                (output / part[0]).parent.mkdir(parents=True, exist_ok=True)
                (output / part[0]).write_bytes(part[1])
    return md_path, html_path


def _read_predictions(run: Run) -> dict[tuple[str, str], dict]:
    path = run.path / "predictions.jsonl"
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            records[(str(rec["group"]), rec["lang"])] = rec
    return records


def _example_parts(runs: Sequence[Run], names: Sequence[str], langs: Sequence[str]) -> list:
    """A few answers per language in every run: the items whose verdict changed first."""
    records = [_read_predictions(r) for r in runs]
    if not all(records):
        return ["No example answers: a run has no predictions.jsonl."]
    parts: list = [f"Up to {EXAMPLES_PER_LANGUAGE} items per language, the same in every run: first those that the "
                   f"last run ({names[-1]}) fixed, then those it broke, then the rest. Verdicts are strict: "
                   "'also names X' means the answer is there but so is another candidate value X."]
    for lang in langs:
        table = examples_table(records, names, lang, EXAMPLES_PER_LANGUAGE)
        if table is not None:
            parts += [f"### {language_cell(lang)}", table]
    return parts


def _comparison_parts(runs, names, n_resamples, seed, alpha) -> list:
    try:
        a, b = load_run(runs[0].path), load_run(runs[1].path)
        comparison = compare_runs(a, b, n_resamples=n_resamples, seed=seed, alpha=alpha)
    except BcatError as e:
        return [f"No comparison: {e}"]
    better = [language_cell(l) for l, r in comparison["per_language"].items() if r["verdict"] == BETTER]
    worse = [language_cell(l) for l, r in comparison["per_language"].items() if r["verdict"] == WORSE]
    summary = (f"{names[1]} against {names[0]} on {comparison['n_items']} items ({comparison['n_groups']} groups): "
               f"better in {', '.join(better) or 'no language'}; worse in {', '.join(worse) or 'no language'}.")
    return [summary, verdict_table(comparison, names)]


def _title(names) -> str:
    return "bcat evaluation: " + (" vs ".join(names) if len(names) <= 3 else f"{len(names)} runs")


def _markdown(sections, title: str, generator: str) -> str:
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = [f"# {title}", "", f"Generated {now} by `{generator}`.", ""]
    for heading, parts in sections:
        out += [f"## {heading}", ""]
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


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("bcat", "resources/report"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@cache
def _markdown_renderer() -> MarkdownIt:
    # CommonMark with raw HTML off: a "<script>" in text is shown, never run; unsafe link schemes are dropped.
    return MarkdownIt("commonmark", {"html": False})


def _html_part(part, cards: Sequence[Card]) -> dict:
    """What the template needs of one part."""
    if isinstance(part, Table):
        return {"kind": "table", "table": part}
    if isinstance(part, tuple):
        return {"kind": "chart", "png_base64": base64.b64encode(part[1]).decode("ascii"), "alt": part[2]}
    if part == "cards":
        return {"kind": "cards", "cards": cards}
    return {"kind": "text", "html": Markup(_markdown_renderer().render(part))}


def _html(sections, title: str, generator: str, cards: Sequence[Card] = ()) -> str:
    return _templates().get_template("report.html.j2").render(
        title=title, generator=generator, generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        sections=[(heading, [_html_part(p, cards) for p in parts]) for heading, parts in sections])


@dataclass(kw_only=True)
class ReportOptions(BootstrapOptions):
    """What ``bcat report`` does, as a Python call: :func:`run_report`. Each field is the command's option
    of the same name; errors name the field (:class:`bcat.errors.OptionError`)."""

    runs: Sequence[str]
    """``bcat eval`` output directories, the baseline first."""
    output: Optional[str] = None
    """Directory for ``report.md``, ``report.html`` and the charts. ``None``: the run itself for one run (the
    report sits beside its metrics), else ``report``."""
    train_run: Optional[Sequence[str]] = None
    """``bcat train`` output directories whose per-language loss curves (``train_log.jsonl``) to draw.
    ``None``: the training runs found next to the evaluated models."""
    alpha: float = 0.05
    """Significance level of the verdicts with two runs (the conventional 5%)."""


def run_report(options: ReportOptions) -> tuple[Path, Path]:
    """Everything ``bcat report`` does; returns the paths of ``report.md`` and ``report.html``."""
    output = options.output or (options.runs[0] if len(options.runs) == 1 else "report")
    md, page = build_report(options.runs, output, n_resamples=options.bootstrap, seed=options.seed,
                            alpha=options.alpha, train_runs=options.train_run or ())
    print(f"wrote {md} and {page}")
    return md, page
