"""``bcat demo`` end to end on the tiny random model (the real run is measured in the README)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bcat.cli import main
from bcat.cli.demo import ARMS


def test_demo_with_grouped_runs_every_step(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny_model_dir), "--output", str(out), "--eval-groups", "1", "--steps", "2",
            "--grouped", "training.threads=1", "data.max_length=256", "training.save_steps=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("eval_base", "eval_shuffled", "eval_grouped"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert len(metrics["per_language"]) == 11, name  # every bundled language, seen and unseen
    # the two trainings differ only in which records share a micro-batch
    shuffled, grouped = (json.loads((out / f"train_{m}" / "training_summary.json").read_text()) for m in ARMS)
    assert shuffled["steps"] == grouped["steps"] == 2
    configs = {m: yaml.safe_load((out / f"train_{m}" / "config.yaml").read_text()) for m in ARMS}
    assert [configs[m]["batch"]["mode"] for m in ARMS] == list(ARMS)
    for cfg in configs.values():
        cfg["batch"].pop("mode"), cfg["training"].pop("output_dir")
    assert configs["shuffled"] == configs["grouped"]
    assert configs["shuffled"]["alignment"]["hidden_weight"] == configs["shuffled"]["alignment"]["output_weight"] == 0
    base_vs_shuffled = json.loads((out / "comparison.json").read_text())
    assert [Path(base_vs_shuffled[k]["path"]).name for k in ("a", "b")] == ["eval_base", "eval_shuffled"]
    assert (out / "grouped_vs_shuffled" / "comparison.json").exists()
    assert (out / "report.html").exists()
    assert "grouped" in printed and "non_english_mean" in printed

    # A second run reuses the finished training and continues the one a kill interrupted after its checkpoint.
    (out / "train_grouped" / "training_summary.json").unlink()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reusing the finished training run") == 1
    resumed = json.loads((out / "train_grouped" / "training_summary.json").read_text())
    assert resumed["steps"] == 2 and [r["step"] for r in resumed["resumes"]] == [1]


def test_the_demo_without_grouped_trains_ordinary_fine_tuning_only(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model_dir), "--output", str(out), "--eval-groups", "1", "--steps", "1",
                 "training.threads=1", "data.max_length=256"]) == 0
    assert sorted(p.name for p in out.glob("train_*") if p.is_dir()) == ["train_shuffled"]
    assert "mode: shuffled" in (out / "train_shuffled" / "config.yaml").read_text()
