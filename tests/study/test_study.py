"""``bcat study`` end to end on the tiny random model: a base arm and two trained arms, one seed each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bcat.bundled import resource
from bcat.cli import main
from bcat.study import runner
from bcat.study.grid import load_study
from bcat.study.planning import step_seconds
from bcat.study.runner import Study

TRAINING = ["objective.name=orpo", "batch.groups_per_batch=1", "batch.languages_per_group=1",
            "alignment.hidden_loss=cosine", "data.max_length=256", "training.max_steps=2", "training.save_steps=1",
            "training.threads=1", "training.learning_rate=1e-3", "training.lr_scheduler=constant"]
SHUFFLED = ["batch.mode=shuffled", "alignment.hidden_weight=0", "alignment.output_weight=0"]


def small_train_qa(tmp_path: Path, groups: int = 3) -> Path:
    """The first groups of the bundled train split (all languages): pairs are made and tokenized fast."""
    lines = resource("kb/train.jsonl").read_text(encoding="utf-8").splitlines()
    keep = list(dict.fromkeys(json.loads(line)["group"] for line in lines))[:groups]
    path = tmp_path / "train_qa.jsonl"
    path.write_text("".join(line + "\n" for line in lines if json.loads(line)["group"] in keep), encoding="utf-8")
    return path


def write_study(tmp_path: Path, model: Path, **changes) -> Path:
    spec = {"name": "tiny", "model": str(model), "cache": str(tmp_path / "cache"), "results": str(tmp_path / "results"),
            "data": {"dev_groups": 1, "test_groups": 1, "train_qa": str(small_train_qa(tmp_path))},
            "eval": {"batch_size": 11, "max_new_tokens": 3, "ood_limit": 1, "ood_tasks": ["lastword"]},
            "curve": {"steps": [1], "groups": 1},
            "training": TRAINING, "bootstrap": 200,
            "arms": [{"name": "base", "train": False, "test": True},
                     {"name": "shuffled", "overrides": SHUFFLED, "test": True},
                     {"name": "grouped", "test": True, "twin": "shuffled"}]}
    spec.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def in_process(calls: list):
    def execute(argv, log):
        calls.append(argv)
        return main(argv)
    return execute


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("study")
    path = write_study(tmp, tiny_model_dir)
    calls: list = []
    code = Study(load_study(path), execute=in_process(calls)).run_all()
    return tmp, path, calls, code


def test_grid_runs_end_to_end_and_writes_results_and_report(finished_study):
    tmp, _, calls, code = finished_study
    assert code == 0
    results = tmp / "results"
    assert sorted(p.name for p in results.glob("*.json")) == ["base.json", "grouped-s0.json", "shuffled-s0.json"]
    grouped = json.loads((results / "grouped-s0.json").read_text())
    assert set(grouped["splits"]) == {"dev", "test", "ood"}
    test = grouped["splits"]["test"]
    assert len(test["per_language"]) == 11 and test["n_items"] == 11
    assert {"english", "gap", "unseen_mean", "non_english_mean"} <= set(test)
    assert "lastword" in grouped["splits"]["ood"]["ood_means"]
    assert [p["step"] for p in grouped["curve"]] == [0, 1, 2]  # base model, snapshot, final
    assert grouped["training"]["steps"] == 2 and grouped["training"]["tokens"] > 0
    assert "training.seed=0" in grouped["overrides"] and "batch.seed=0" in grouped["overrides"]
    kinds = [c["argv"][1] for c in grouped["commands"]]
    assert kinds.count("train") == 1 and kinds.count("eval") == 4  # dev, test, ood, one curve point
    assert all(c["rc"] == 0 for c in grouped["commands"]) and grouped["machine"]["cpu_count"]
    # the run's small outputs, no weights, no prompts
    run_dir = results / "runs" / "grouped-s0"
    assert {p.name for p in (run_dir / "train").iterdir()} == {"config.yaml", "training_summary.json", "train_log.jsonl"}
    assert not list(results.rglob("*.safetensors")) and not list(results.rglob("*.bin"))
    pred = json.loads((run_dir / "test" / "predictions.jsonl").read_text().splitlines()[0])
    assert "prompt" not in pred and "strict_correct" in pred
    # the shuffled twin really trained shuffled: its config says so
    assert "mode: shuffled" in (results / "runs" / "shuffled-s0" / "train" / "config.yaml").read_text()
    report = (results / "REPORT.md").read_text()
    for title in ("Against the paper", "grouped against shuffled", "Each arm against its shuffled twin",
                  "Learning curves on dev", "Out-of-domain suite", "Runs"):
        assert title in report, title
    assert (results / "REPORT.html").read_text().count("<img") >= 4
    assert (results / "report" / "dev_curves.png").is_file()


def test_a_second_invocation_skips_finished_runs(finished_study, capsys):
    tmp, path, _, _ = finished_study
    calls: list = []
    assert Study(load_study(path), execute=in_process(calls)).run_all() == 0
    assert calls == []
    assert main(["study", str(path), "--plan"]) == 0
    plan = capsys.readouterr().out
    assert "remaining: 0.00 CPU-hours" in plan and plan.count("done") >= 3


def test_a_lost_cache_costs_nothing_once_runs_are_recorded(finished_study):
    tmp, path, _, _ = finished_study
    spec = load_study(path)
    spec.cache = str(tmp / "another-cache")
    calls: list = []
    assert Study(spec, execute=in_process(calls)).run_all() == 0
    assert calls == []


def test_a_checkout_elsewhere_skips_finished_runs(finished_study, tmp_path, monkeypatch):
    """Results committed in one checkout are finished in another: the evaluation key holds the data's
    content, not its path (a clone at another path once re-ran every finished run)."""
    tmp, path, _, _ = finished_study
    real = runner.resolve_data

    def elsewhere(name):
        copy = tmp_path / Path(real(name)).name
        if not copy.exists():
            shutil.copy(real(name), copy)
        return copy

    monkeypatch.setattr(runner, "resolve_data", elsewhere)
    calls: list = []
    study = Study(load_study(path), execute=in_process(calls))
    assert str(study.dev).startswith(str(tmp_path)) and study.run_all() == 0
    assert calls == []


def test_plan_lists_every_run_with_its_estimate(tmp_path, tiny_model_dir, capsys):
    path = write_study(tmp_path, tiny_model_dir)
    assert main(["study", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    for run in ("base", "shuffled-s0", "grouped-s0"):
        assert f"\n{run} " in out
    assert "remaining:" in out and "arithmetic:" in out
    rows, _ = Study(load_study(path)).plan()
    # shuffled steps cost 9.5 s against 4.5 s grouped (the timing defaults), 2 records per step of 4 measured
    shuffled, grouped = (next(r for r in rows if r["run"] == n) for n in ("shuffled-s0", "grouped-s0"))
    assert shuffled["train_s"] - 30 == pytest.approx(2 * 9.5 * 2 / 4)
    assert grouped["train_s"] - 30 == pytest.approx(2 * 4.5 * 2 / 4)
    spec = load_study(path)
    overrides = spec.shared + ["batch.groups_per_batch=8"]
    assert step_seconds(spec, overrides + ["model.gradient_checkpointing=true"]) == pytest.approx(
        1.7 * step_seconds(spec, overrides))
    assert not (tmp_path / "cache").exists()  # a plan runs nothing


def test_base_arm_adopts_an_existing_evaluation_and_waits_for_an_unfinished_one(finished_study, tmp_path,
                                                                                 tiny_model_dir):
    tmp, _, _, _ = finished_study
    done = tmp / "cache" / "eval"
    base_test = next(p for p in done.glob("base-*/test"))
    # still being written: the base run waits, the others go on, exit code 3
    pending = tmp_path / "pending"
    pending.mkdir()
    path = write_study(tmp_path, tiny_model_dir, arms=[
        {"name": "base", "train": False, "test": True, "dev": "none", "ood": "none", "adopt": {"test": str(pending)}}])
    calls: list = []
    assert Study(load_study(path), execute=in_process(calls)).run_all() == 3
    assert calls == [] and not (tmp_path / "results" / "base.json").exists()
    # finished: adopted, not re-evaluated
    for name in ("metrics.json", "predictions.jsonl"):
        (pending / name).write_bytes((base_test / name).read_bytes())
    assert Study(load_study(path), execute=in_process(calls)).run_all() == 0
    assert [c[0] for c in calls] == ["score"]  # re-scored, not re-evaluated
    adopted = tmp_path / "results" / "runs" / "base" / "test"
    assert "re-scored with `bcat score`" in (adopted / "ADOPTED_FROM").read_text()
    # re-scoring bcat eval's own outputs gives bcat eval's own numbers
    original, rescored = (json.loads((d / "metrics.json").read_text()) for d in (base_test, adopted))
    for key in ("per_language", "english", "gap", "non_english_mean", "unseen_mean", "ci", "model", "options"):
        assert rescored[key] == original[key], key
    assert json.loads((tmp_path / "results" / "base.json").read_text())["commands"][0]["argv"][1] == "score"


def test_adoption_refuses_an_evaluation_with_other_options(finished_study, tmp_path, tiny_model_dir, capsys):
    tmp, _, _, _ = finished_study
    base_test = next((tmp / "cache" / "eval").glob("base-*/test"))
    path = write_study(tmp_path, tiny_model_dir, eval={"batch_size": 4, "max_new_tokens": 3, "ood_limit": 0}, arms=[
        {"name": "base", "train": False, "test": True, "dev": "none", "adopt": {"test": str(base_test)}}])
    assert main(["study", str(path)]) != 0
    err = capsys.readouterr().err
    assert "cannot adopt" in err and "--batch-size 11, the study's is 4" in err
    assert not (tmp_path / "results" / "base.json").exists()


def test_killed_mid_training_a_rerun_resumes_from_the_checkpoint(tmp_path, tiny_model_dir):
    training = [t for t in TRAINING if not t.startswith("training.max_steps")] + ["training.max_steps=40"]
    path = write_study(tmp_path, tiny_model_dir, training=training, curve={"steps": []},
                       arms=[{"name": "grouped", "dev": "none"}])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "bcat.cli", "study", str(path)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    train_root = tmp_path / "cache" / "train"
    deadline = time.time() + 240
    while time.time() < deadline and not list(train_root.glob("*/checkpoints/step-00000003")):
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    (train_dir,) = train_root.iterdir()
    assert not (train_dir / "training_summary.json").exists(), "training finished before the kill: make it longer"
    assert not (tmp_path / "results" / "grouped-s0.json").exists()
    calls: list = []
    assert Study(load_study(path), execute=in_process(calls)).run_all() == 0
    assert [c[0] for c in calls] == ["train"] and calls[0][-1] == "--resume-if-possible"
    steps = [json.loads(line)["step"] for line in (train_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    log = (tmp_path / "cache" / "commands.jsonl").read_text().splitlines()
    assert len([line for line in log if '"train"' in line]) == 1  # the killed attempt never wrote its entry
    assert json.loads((tmp_path / "results" / "grouped-s0.json").read_text())["training"]["steps"] == 40


def test_detach_runs_the_study_in_the_background(finished_study, capsys):
    tmp, path, _, _ = finished_study
    assert main(["study", str(path), "--detach"]) == 0
    printed = capsys.readouterr().out
    pid = int((tmp / "cache" / "study.pid").read_text())
    assert f"process {pid}" in printed
    deadline = time.time() + 120
    while time.time() < deadline and "complete" not in (tmp / "cache" / "study.log").read_text():
        time.sleep(0.2)
    assert "bcat study: complete" in (tmp / "cache" / "study.log").read_text()  # everything was already finished


def test_plan_gives_the_remaining_time_at_the_rates_finished_runs_measured(finished_study, tmp_path):
    tmp, path, _, _ = finished_study
    shutil.copytree(tmp / "results", tmp_path / "results")
    (tmp_path / "results" / "grouped-s0.json").unlink()
    spec = load_study(path)
    spec.results, spec.cache = str(tmp_path / "results"), str(tmp_path / "no-cache")
    rows, text = Study(spec, read_only=True).plan()
    row = {r["run"]: r for r in rows}
    recorded = {run: json.loads((tmp_path / "results" / f"{run}.json").read_text())["commands"]
                for run in ("base", "shuffled-s0")}
    train = [c["seconds"] for c in recorded["shuffled-s0"] if c["argv"][1] == "train"]
    evals = [(c["seconds"], row[run]["eval_s"][Path(c["output"]).name])
             for run, commands in recorded.items() for c in commands if c["argv"][1] == "eval"]
    train_ratio = sum(train) / row["shuffled-s0"]["train_s"]
    eval_ratio = sum(s for s, _ in evals) / sum(e for _, e in evals)
    assert f"`bcat train` took {train_ratio:.2f}x its estimate over 1 command" in text
    assert f"`bcat eval` took {eval_ratio:.2f}x its estimate over {len(evals)} commands" in text
    left = row["grouped-s0"]["remaining_by_kind_s"]
    assert left["train"] > 0 and left["eval"] > 0
    at_measured = left["train"] * train_ratio + left["eval"] * eval_ratio
    assert f"at the rates the finished runs measured: {at_measured / 3600:.2f} CPU-hours" in text


def test_a_training_shared_by_two_runs_is_measured_once():
    from bcat.study.planning import Estimate, Measured, record_measured

    measured = {"train": Measured(), "eval": Measured()}
    est = Estimate(train_s=100.0, eval_s={"test": 50.0})
    shared = {"output": "cache/train/t-1", "argv": ["bcat", "train"], "seconds": 80.0}
    for test_dir in ("cache/eval/t-1-e/test", "cache/eval/t-2-e/test"):
        record_measured(measured, est, {"commands": [shared, {"output": test_dir, "argv": ["bcat", "eval"],
                                                             "seconds": 60.0}]})
    record_measured(measured, est, {"commands": [{"output": "x/test", "argv": ["bcat", "score"], "seconds": 1.0}]})
    assert (measured["train"].commands, measured["train"].ratio) == (1, 0.8)
    assert (measured["eval"].commands, measured["eval"].ratio) == (2, 1.2)


def test_rescore_rewrites_only_the_evaluations_a_scorer_judges_otherwise(finished_study, tmp_path, capsys):
    tmp, path, _, _ = finished_study
    shutil.copytree(tmp / "results", tmp_path / "results")
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "results": str(tmp_path / "results"),
                                         "cache": str(tmp_path / "no-cache")}))
    study = Study(load_study(spec_file))
    assert runner.recording.rescore(study) == []  # the current scorer made them: nothing changes
    assert not any("rescored" in json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json"))
    # an older scorer judged one answer otherwise: its metrics, predictions and the run's JSON follow this one
    test_dir = tmp_path / "results" / "runs" / "shuffled-s0" / "test"
    original = {name: (test_dir / name).read_text() for name in ("metrics.json", "predictions.jsonl")}
    records = [json.loads(line) for line in original["predictions.jsonl"].splitlines()]
    records[0]["strict_correct"] = not records[0]["strict_correct"]
    (test_dir / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    (test_dir / "metrics.json").write_text(json.dumps({**json.loads(original["metrics.json"]), "english": -1.0}))
    run_json = tmp_path / "results" / "shuffled-s0.json"
    recorded = json.loads(run_json.read_text())
    assert runner.recording.rescore(study) == ["shuffled-s0 test: 1 of the recorded answers judged otherwise"]
    assert [json.loads(line) for line in (test_dir / "predictions.jsonl").read_text().splitlines()] == \
        [json.loads(line) for line in original["predictions.jsonl"].splitlines()]
    assert json.loads((test_dir / "metrics.json").read_text())["english"] == json.loads(original["metrics.json"])["english"]
    rewritten = json.loads(run_json.read_text())
    assert rewritten["rescored"]["splits"] == ["test"]
    assert rewritten["splits"]["test"]["english"] == recorded["splits"]["test"]["english"]
    assert main(["study", str(spec_file), "--rescore"]) == 0
    assert "every recorded answer is judged as recorded" in capsys.readouterr().out
    assert (tmp_path / "results" / "REPORT.md").is_file()
