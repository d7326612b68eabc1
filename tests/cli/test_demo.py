"""``bcat demo`` end to end on the tiny random model (the real run is measured in the README)."""

from __future__ import annotations

import json

from bcat.cli import main


def test_demo_with_baseline_runs_every_step(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny_model_dir), "--output", str(out), "--eval-groups", "1", "--steps", "2",
            "--baseline", "training.threads=1", "data.max_length=256", "training.save_steps=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("eval_base", "eval_baseline", "eval_bcat"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert len(metrics["per_language"]) == 11, name  # every bundled language, seen and unseen
    # BCAT and the control differ only in the sampler and the alignment terms
    bcat, control = (json.loads((out / d / "training_summary.json").read_text()) for d in ("train", "train_baseline"))
    assert bcat["steps"] == control["steps"] == 2
    cfg = (out / "train_baseline" / "config.yaml").read_text()
    assert "mode: shuffled" in cfg and "hidden_weight: 0" in cfg
    assert (out / "comparison.json").exists() and (out / "bcat_vs_baseline" / "comparison.json").exists()
    assert (out / "report.html").exists()
    assert "baseline" in printed and "non_english_mean" in printed

    # A second run reuses the finished training and continues the one a kill interrupted after its checkpoint.
    (out / "train_baseline" / "training_summary.json").unlink()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reusing the finished training run") == 1
    resumed = json.loads((out / "train_baseline" / "training_summary.json").read_text())
    assert resumed["steps"] == 2 and [r["step"] for r in resumed["resumes"]] == [1]
