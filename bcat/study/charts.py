"""The study's own charts (PNG bytes): dev learning curves and OOD retention per arm.

The per-language and headline charts are :mod:`bcat.report.charts`' own, fed with seed-pooled runs.
"""

from __future__ import annotations

from typing import Optional, Sequence

from bcat.report.charts import PALETTE, _png, _pyplot

CURVE_PANELS = (("english", "English"), ("non_english_mean", "non-English (seen, mean)"),
                ("unseen_mean", "unseen (mean)"))


def curve_chart(curves: dict[str, list[dict]]) -> bytes:
    """One panel per headline number, accuracy against training step, one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(12, 3.4), sharey=True)
    for k, (name, points) in enumerate(curves.items()):
        for ax, (key, _) in zip(axes, CURVE_PANELS):
            xs = [p["step"] for p in points if p.get(key) is not None]
            ys = [p[key] for p in points if p.get(key) is not None]
            ax.plot(xs, ys, marker="o", ms=4, color=PALETTE[k % len(PALETTE)], label=name if key == "english" else None,
                    linestyle="-" if k < len(PALETTE) else "--")
    for ax, (_, title) in zip(axes, CURVE_PANELS):
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("accuracy (dev)")
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=min(5, len(curves)), frameon=False, fontsize=8.5)
    fig.tight_layout()
    return _png(fig)


def ood_chart(names: Sequence[str], means: Sequence[dict], metrics: dict[str, str]) -> Optional[bytes]:
    """Grouped bars: one group per OOD task (its ``metrics[task]`` averaged over languages), a bar per arm."""
    tasks = [t for t in metrics if any(t in m for m in means)]
    if not tasks:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) + 2), 3.4))
    width = 0.8 / max(1, len(names))
    for k, (name, m) in enumerate(zip(names, means)):
        for i, task in enumerate(tasks):
            value = (m.get(task) or {}).get(metrics[task])
            if value is not None:
                ax.bar(i - 0.4 + width * (k + 0.5), value, width * 0.92, color=PALETTE[k % len(PALETTE)],
                       label=name if i == 0 else None)
    ax.set_xticks(range(len(tasks)), [f"{t}\n({metrics[t]})" for t in tasks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over languages")
    ax.legend(frameon=False, fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(5, len(names)))
    return _png(fig)
