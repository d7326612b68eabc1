"""The study report's plain statement (:func:`bcat.study.report.verdict_line`) on hand-made comparisons."""

from __future__ import annotations

import json

from bcat.study.report import verdict_line


def comparison(english, non_english, gap, *, non_english_ci=(-0.05, 0.05)) -> dict:
    """A two-language comparison (en, de; th unseen): each headline is ``(a, b)`` = (twin, arm)."""
    def row(a, b, ci=(-0.05, 0.05)):
        return {"a": a, "b": b, "diff": b - a, "ci": list(ci)}

    per = {lang: {"a_only_correct": 3, "b_only_correct": 2, "mcnemar_p": 1.0, "p": 0.4, "diff": -0.01,
                  "verdict": "no significant change"} for lang in ("en", "de", "th")}
    headline = {"english": row(*english), "non_english_mean": row(*non_english, ci=non_english_ci), "gap": row(*gap)}
    per_seed = [{"diff": {k: v["diff"] + d for k, v in headline.items()}} for d in (-0.01, 0.0, 0.01)]
    return {"headline": headline, "languages": {"seen": ["en", "de"], "unseen": ["th"], "anchor": "en"},
            "per_language": per, "n_groups": 160, "seeds_pooled": 3, "per_seed": per_seed,
            "interval": "hierarchical bootstrap: the 3 seed pairs resampled, and the groups"}


def statement(c: dict, english_tolerance: float = 0.01) -> str:
    return "\n".join(verdict_line("orpo_best", "orpo_shuffled", "orpo", c, "test", {}, {}, english_tolerance))


def test_a_closed_gap_is_a_share_of_the_baseline_gap_and_better_needs_non_english_up():
    text = statement(comparison(english=(0.80, 0.80), non_english=(0.70, 0.75), gap=(0.10, 0.05),
                                non_english_ci=(0.01, 0.09)))
    assert "50% of orpo_shuffled's gap closed (paper: 74%, 13.6 -> 3.6 points)" in text
    assert "**Better** than orpo_shuffled" in text and "3 seeds per arm" in text
    assert "Intervals: hierarchical bootstrap" in text and "per seed pair +4.0, +5.0, +6.0" in text
    assert "no significant change in any language" in text


def test_a_wider_gap_is_called_growth_not_a_negative_share():
    text = statement(comparison(english=(0.80, 0.78), non_english=(0.74, 0.63), gap=(0.06, 0.15)))
    assert "the gap grew by 150% of orpo_shuffled's" in text and "closed" not in text
    assert "**Not better**" in text and "non-English does not rise significantly" in text
    assert "English falls by 2.0 points (more than 1)" in text
    assert "**Not better**" not in statement(comparison(english=(0.80, 0.785), non_english=(0.70, 0.75),
                                                        gap=(0.10, 0.035), non_english_ci=(0.01, 0.09)), 0.02)


def test_a_gap_that_shrinks_because_english_falls_is_called_a_loss():
    text = statement(comparison(english=(0.80, 0.70), non_english=(0.70, 0.70), gap=(0.10, 0.00)))
    assert "100% of orpo_shuffled's gap closed" in text
    assert "The gap shrinks because English falls: a loss, not a gain." in text


def test_non_english_significantly_down_is_called_worse():
    text = statement(comparison(english=(0.80, 0.79), non_english=(0.81, 0.755), gap=(-0.01, 0.035),
                                non_english_ci=(-0.094, -0.014)), english_tolerance=0.02)
    assert "**Worse** than orpo_shuffled: non-English falls by 5.5 points (interval below 0)." in text
    assert "Not better" not in text and "does not rise" not in text


def test_the_ood_line_names_the_seeds_it_comes_from():
    ood_a, ood_b = {"lastword": {"accuracy": 0.50}}, {"lastword": {"accuracy": 0.60}}
    c = comparison(english=(0.80, 0.80), non_english=(0.70, 0.70), gap=(0.10, 0.10))
    one = "\n".join(verdict_line("a", "b", "orpo", c, "test", ood_a, ood_b, 0.01, [0]))
    assert "- OOD change (points, mean over languages; seed 0 only): lastword accuracy +10.0." in one
    two = "\n".join(verdict_line("a", "b", "orpo", c, "test", ood_a, ood_b, 0.01, [0, 1]))
    assert "mean over languages; seeds 0, 1)" in two


def test_a_baseline_gap_inside_the_noise_gets_no_share_and_a_tiny_shrink_is_not_called_a_loss():
    c = comparison(english=(0.80, 0.76), non_english=(0.797, 0.76), gap=(0.003, 0.0))
    text = statement(c)  # the gap's 95% CI is +-5 points: a 0.3-point gap has no meaningful share
    assert "orpo_shuffled's gap is within the change's 95% CI half-width (5.0 points): no share" in text
    assert "closed (paper" not in text and "grew" not in text
    assert "English falls by 4.0 points" in text and "a loss, not a gain" not in text


def test_no_positive_baseline_gap_has_nothing_to_close():
    text = statement(comparison(english=(0.72, 0.68), non_english=(0.76, 0.64), gap=(-0.04, 0.04)))
    assert "orpo_shuffled has no positive gap to close" in text



def rate_grid(tmp_path, rates=("0.0001", "0.0004")):
    """A study that picks each arm's learning rate on dev, then runs both arms at their picks (2 seeds)."""
    import yaml

    from bcat.study.grid import load_study

    arms = [{"name": f"{mode}_lr{lr}", "overrides": [f"batch.mode={mode}", f"training.learning_rate={lr}"]}
            for lr in rates for mode in ("grouped", "shuffled")] + [
        {"name": "grouped", "from_selection": "grouped", "seeds": [0, 1], "test": True, "twin": "shuffled"},
        {"name": "shuffled", "from_selection": "shuffled", "seeds": [0, 1], "test": True}]
    spec = {"name": "sel", "model": "some/model", "results": str(tmp_path / "results"),
            "training": ["training.max_steps=4", "training.save_steps=2"], "arms": arms,
            "selection": [{"name": m, "candidates": [f"{m}_lr{lr}" for lr in rates]} for m in ("grouped", "shuffled")]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return load_study(tmp_path / "study.yaml")


def status(spec, results) -> str:
    from bcat.study.report import build_study_report

    report, _ = build_study_report(spec, results)
    return report.read_text(encoding="utf-8").split("## Status", 1)[1].split("##", 1)[0].strip()


def test_the_status_counts_the_runs_that_wait_for_a_selection(tmp_path):
    assert status(rate_grid(tmp_path), tmp_path / "results").startswith(
        "0 of 4 planned runs finished; the others are not in these tables yet; 4 more runs wait for a selection on dev")


def test_a_pick_made_before_the_grid_gained_a_candidate_is_not_used(tmp_path):
    from bcat.study.selection import pick, selection_file

    spec = rate_grid(tmp_path)
    dev = {"english": 0.7, "non_english_mean": 0.6}
    (tmp_path / "results").mkdir()
    for sel in spec.selection:
        made = pick(sel, {arm: dev for arm in sel.candidates}, {arm: f"{arm}-s0" for arm in sel.candidates},
                    {arm: {} for arm in sel.candidates})
        selection_file(tmp_path / "results", sel).write_text(json.dumps(made), encoding="utf-8")
    assert status(spec, tmp_path / "results").startswith("0 of 8 planned runs finished;")

    grown = rate_grid(tmp_path, rates=("0.0001", "0.0004", "0.0008"))
    assert status(grown, tmp_path / "results").startswith(
        "0 of 6 planned runs finished; the others are not in these tables yet; 4 more runs wait for a selection on dev")


def test_runs_from_a_pick_at_the_top_of_the_grid_wait_and_the_report_says_why(tmp_path):
    from bcat.study.report import build_study_report
    from bcat.study.selection import pick, selection_file

    spec = rate_grid(tmp_path, rates=("0.0001", "0.0002", "0.0004"))
    (tmp_path / "results").mkdir()
    for sel in spec.selection:
        dev = {arm: {"english": 0.7, "non_english_mean": 0.5 + i / 100} for i, arm in enumerate(sel.candidates)}
        settings = {arm: {"training.learning_rate": float(arm.rsplit("lr", 1)[1])} for arm in sel.candidates}
        made = pick(sel, dev, {arm: f"{arm}-s0" for arm in sel.candidates}, settings)
        assert made["at_edge"]["side"] == "largest"
        selection_file(tmp_path / "results", sel).write_text(json.dumps(made), encoding="utf-8")
    assert status(spec, tmp_path / "results").startswith(
        "0 of 6 planned runs finished; the others are not in these tables yet; 4 more runs wait for a selection on dev")
    report = build_study_report(spec, tmp_path / "results")[0].read_text(encoding="utf-8")
    assert "has the largest training.learning_rate the candidates try (0.0004)" in report
    assert "wait until a candidate beyond it is added" in report


def test_an_arm_whose_twin_has_a_twin_is_also_judged_against_the_end_of_the_chain(tmp_path):
    """``no_anchor -> grouped -> shuffled``: the ablation against grouping, and against ordinary fine-tuning."""
    import yaml

    from bcat.study.grid import load_study
    from bcat.study.report import judged_pairs

    arms = [{"name": "shuffled", "overrides": ["batch.mode=shuffled"]},
            {"name": "grouped", "twin": "shuffled"},
            {"name": "no_anchor", "overrides": ["batch.mode=no_anchor"], "twin": "grouped"},
            {"name": "infonce", "overrides": ["batch.groups_per_batch=2", "alignment.hidden_weight=3"], "twin": "grouped"}]
    spec = {"name": "chain", "model": "some/model", "results": str(tmp_path / "results"),
            "training": ["training.max_steps=4", "training.save_steps=2"], "arms": arms}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert judged_pairs(load_study(tmp_path / "study.yaml")) == [
        ("grouped", "shuffled"), ("no_anchor", "grouped"), ("no_anchor", "shuffled"),
        ("infonce", "grouped"), ("infonce", "shuffled")]
