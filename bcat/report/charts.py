"""The report's charts (matplotlib, PNG bytes): strict accuracy per language, the headline numbers,
the training loss per language."""

from __future__ import annotations

import io
from typing import Sequence

from bcat.evaluation.compare import Run
from bcat.report.tables import language_cell

PALETTE = ["#3b6ea5", "#e07b39", "#4f9a5d", "#c44e52", "#8172b3", "#937860"]

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
    ax.set_xticks(range(len(langs)), [language_cell(l).replace(" ", "\n", 1) for l in langs], fontsize=8.5)
    ax.set_xlim(-0.6, len(langs) - 0.4)
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:  # no bar at all (e.g. no answer whose language could be judged)
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
    left.set_ylabel("strict accuracy")
    left.set_title("Strict accuracy (headline)", fontsize=10, loc="left")
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


def loss_chart(logs) -> bytes:
    """One panel per training run: the main objective's loss per language against the step (log
    scale when every value is positive), the anchor in black, the total loss dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(logs), figsize=(min(5.2 * len(logs), 15), 3.6), squeeze=False)
    for ax, log in zip(axes[0], logs):
        steps = [e["step"] for e in log.entries]
        positive = True
        others = [l for l in log.languages() if l != log.anchor]
        for lang in log.languages():
            points = [(e["step"], e["main_per_language"][lang]) for e in log.entries
                      if lang in e.get("main_per_language", {})]
            xs, ys = zip(*points)
            positive &= min(ys) > 0
            if lang == log.anchor:
                ax.plot(xs, ys, lw=2.2, color="#111", marker=".", ms=3, label=f"{language_cell(lang)} (anchor)")
                continue
            i = others.index(lang)  # colours repeat after six languages; the repeats are dotted
            ax.plot(xs, ys, lw=1.2, color=PALETTE[i % len(PALETTE)], ls="-" if i < len(PALETTE) else ":",
                    marker=".", ms=3, label=language_cell(lang))
        totals = [e.get("loss") for e in log.entries]
        if all(isinstance(t, (int, float)) for t in totals) and totals:
            ax.plot(steps, totals, color="#888", ls="--", lw=1, label="total loss")
            positive &= min(totals) > 0
        if positive:
            ax.set_yscale("log")
        ax.set_title(log.name, fontsize=10, loc="left")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7.5, frameon=False, ncol=2)
    fig.tight_layout()
    return _png(fig)
