"""The documented A/B template (``configs/study/template-ab.yaml``) end to end on the tiny model: your own
pairs and evaluation files, 2 arms x 2 seeds, a few steps, seed-aware output."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bcat.bundled import resource
from bcat.cli import main
from bcat.study.grid import load_study
from bcat.study.runner import Study

ROOT = Path(__file__).resolve().parents[2]


def first_groups(name: str, groups: int, out: Path) -> Path:
    lines = resource(name).read_text(encoding="utf-8").splitlines()
    keep = list(dict.fromkeys(json.loads(line)["group"] for line in lines))[:groups]
    out.write_text("".join(line + "\n" for line in lines if json.loads(line)["group"] in keep), encoding="utf-8")
    return out


def test_the_ab_template_runs_two_arms_by_two_seeds_on_your_files(tmp_path, tiny_model_dir):
    qa = first_groups("kb/train.jsonl", 4, tmp_path / "qa.jsonl")
    pairs = tmp_path / "my_pairs.jsonl"
    assert main(["data", "pairs", "--input", str(qa), "--output", str(pairs)]) == 0
    spec = yaml.safe_load((ROOT / "configs/study/template-ab.yaml").read_text(encoding="utf-8"))
    # What a user edits (the EDIT lines), and what makes it a few-second test.
    spec["model"] = str(tiny_model_dir)
    spec["results"] = str(tmp_path / "results")
    spec["cache"] = str(tmp_path / "cache")
    spec["data"].update(train=str(pairs), dev=str(first_groups("kb/dev.jsonl", 2, tmp_path / "dev.jsonl")),
                        test=str(first_groups("kb/test.jsonl", 3, tmp_path / "test.jsonl")))
    spec["eval"].update(batch_size=11, max_new_tokens=3)
    spec["training"] = [o for o in spec["training"] if not o.startswith(("training.max_steps", "training.save_steps",
                                                                         "training.warmup_steps"))]
    spec["training"] += ["training.max_steps=2", "training.save_steps=1", "training.threads=1", "data.max_length=256"]
    spec["bootstrap"] = 200
    for arm in spec["arms"]:
        arm["seeds"] = [0, 1]
    path = tmp_path / "ab.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")

    study = Study(load_study(path), execute=lambda argv, log: main(argv))
    assert study.run_all() == 0
    results = tmp_path / "results"
    assert sorted(p.name for p in results.glob("*.json")) == ["grouped-s0.json", "grouped-s1.json",
                                                              "shuffled-s0.json", "shuffled-s1.json"]
    run = json.loads((results / "grouped-s1.json").read_text(encoding="utf-8"))
    assert f"data.train={pairs}" in " ".join(run["commands"][0]["argv"])
    report = (results / "REPORT.md").read_text(encoding="utf-8")
    assert "### grouped against shuffled (ORPO, test split, 3 groups, 2 seeds per arm)" in report
    assert "Intervals: hierarchical bootstrap" in report and "per seed pair" in report
    assert "Holm" in report and "| seed pair 1 |" in report
