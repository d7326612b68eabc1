"""The selection on dev and the grid's validation, without training anything."""

from __future__ import annotations

import json

import pytest
import yaml

from bcat.errors import ConfigError
from bcat.study.grid import expand, load_study
from bcat.study.runner import Study

TRAINING = ["training.max_steps=4", "training.save_steps=2"]
ARMS = [{"name": "shuffled", "overrides": ["batch.mode=shuffled"], "seeds": [0, 1]},
        {"name": "grouped", "overrides": ["alignment.hidden_weight=0"]},
        {"name": "both"},
        {"name": "best", "from_selection": True, "seeds": [0, 1], "test": True, "twin": "shuffled"},
        {"name": "dpo_best", "from_selection": True, "overrides": ["objective.name=dpo"], "test": True}]


def study_file(tmp_path, **changes):
    spec = {"name": "sel", "model": "some/model", "cache": str(tmp_path / "cache"), "results": str(tmp_path / "results"),
            "training": TRAINING, "arms": ARMS,
            "selection": {"candidates": ["grouped", "both"], "baseline": "shuffled", "english_tolerance": 0.01}}
    spec.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def finish(study: Study, name: str, english: float, non_english: float) -> None:
    """A stand-in for a finished run: only what the selection reads."""
    study.results.mkdir(parents=True, exist_ok=True)
    run = next(r for r in expand(study.spec) if r.name == name)
    (study.results / f"{name}.json").write_text(json.dumps(
        {"run": name, "key": run.key(study.spec), "eval_key": study.eval_key,
         "splits": {"dev": {"english": english, "non_english_mean": non_english}}}))


def test_selection_waits_for_the_candidates_then_keeps_english_within_a_point(tmp_path):
    study = Study(load_study(study_file(tmp_path)))
    # what the selection waits for runs first (the first seeds of the baseline and the candidates)
    assert [r.name for r in study.runs()] == ["shuffled-s0", "grouped-s0", "both-s0", "shuffled-s1"]
    finish(study, "shuffled-s0", 0.60, 0.40)
    finish(study, "grouped-s0", 0.55, 0.50)  # higher non-English, but English 5 points lower: not eligible
    assert study.selection(study.spec.selection[0]) is None  # "both" has not finished
    finish(study, "both-s0", 0.595, 0.45)  # within the 1-point tolerance
    sel = study.selection(study.spec.selection[0])
    assert sel["selected"] == "both" and sel["english_constraint_met"]
    assert sel["candidates"]["grouped"]["eligible"] is False
    assert json.loads((study.results / "selection.json").read_text())["selected"] == "both"
    runs = {r.name: r for r in study.runs()}
    assert {"best-s0", "best-s1", "dpo_best-s0"} <= set(runs)
    # the selected setting's first seed IS the candidate's run: one training, shared through the cache key
    assert runs["best-s0"].key(study.spec) == runs["both-s0"].key(study.spec)
    assert runs["best-s1"].key(study.spec) != runs["both-s0"].key(study.spec)
    assert "objective.name=dpo" in runs["dpo_best-s0"].overrides and runs["dpo_best-s0"].selected == "both"


def test_without_an_eligible_candidate_the_metric_decides_and_says_so(tmp_path):
    study = Study(load_study(study_file(tmp_path)))
    finish(study, "shuffled-s0", 0.60, 0.40)
    finish(study, "grouped-s0", 0.50, 0.50)
    finish(study, "both-s0", 0.40, 0.45)
    sel = study.selection(study.spec.selection[0])
    assert sel["selected"] == "grouped" and sel["english_constraint_met"] is False


PER_ARM = [{"name": f"{mode}_lr{lr}", "overrides": [f"batch.mode={mode}", f"training.learning_rate={lr}"]}
           for lr in ("0.0001", "0.0004") for mode in ("grouped", "shuffled")] + [
    {"name": "grouped", "from_selection": "grouped", "seeds": [0, 1], "test": True, "twin": "shuffled"},
    {"name": "shuffled", "from_selection": "shuffled", "seeds": [0, 1], "test": True},
    {"name": "no_anchor", "from_selection": "grouped", "overrides": ["batch.mode=no_anchor"], "test": True,
     "twin": "grouped"}]
PER_ARM_SELECTIONS = [{"name": mode, "candidates": [f"{mode}_lr0.0001", f"{mode}_lr0.0004"]}
                      for mode in ("grouped", "shuffled")]


def test_each_arm_keeps_its_own_learning_rate_with_english_within_a_point_of_its_best(tmp_path):
    study = Study(load_study(study_file(tmp_path, arms=PER_ARM, selection=PER_ARM_SELECTIONS)))
    assert [r.name for r in study.runs()] == ["grouped_lr0.0001-s0", "shuffled_lr0.0001-s0", "grouped_lr0.0004-s0",
                                              "shuffled_lr0.0004-s0"]
    assert study.pending_selection() == ["grouped", "shuffled", "no_anchor"]
    plan = {r["run"]: r for r in study.plan()[0]}
    assert plan["grouped-s1"]["estimated_as"] == "grouped_lr0.0001"  # stands in until the pick is made
    finish(study, "grouped_lr0.0001-s0", 0.60, 0.50)
    finish(study, "grouped_lr0.0004-s0", 0.585, 0.55)  # English 1.5 points below this arm's best: not eligible
    finish(study, "shuffled_lr0.0001-s0", 0.60, 0.50)
    finish(study, "shuffled_lr0.0004-s0", 0.595, 0.52)  # within a point of the best English
    assert study.picks() == {"grouped": "grouped_lr0.0001", "shuffled": "shuffled_lr0.0004"}
    grouped = json.loads((study.results / "selection-grouped.json").read_text())
    assert grouped["reference"] == {"arm": None, "english": 0.60} and "the best candidate's" in grouped["rule"]
    assert grouped["candidates"]["grouped_lr0.0004"]["eligible"] is False
    runs = {r.name: r for r in study.runs()}
    assert runs["grouped-s0"].key(study.spec) == runs["grouped_lr0.0001-s0"].key(study.spec)  # shared training
    assert "training.learning_rate=0.0004" in runs["shuffled-s1"].overrides
    assert runs["no_anchor-s0"].overrides[-3:] == ["batch.mode=no_anchor", "training.seed=0", "batch.seed=0"]
    assert "training.learning_rate=0.0001" in runs["no_anchor-s0"].overrides
    assert [n for n in runs if not n.endswith("lr0.0001-s0") and "lr0.0004" not in n] == [
        "shuffled-s0", "grouped-s0", "shuffled-s1", "grouped-s1", "no_anchor-s0"]


SWEEP = [{"name": f"lr{lr}", "overrides": [f"training.learning_rate={lr}"]} for lr in ("0.0001", "0.0002", "0.0004")] + [
    {"name": "tuned", "from_selection": True, "seeds": [0, 1], "test": True}]


@pytest.mark.parametrize("at_edge", ["stop", "go_on"])
def test_a_pick_at_the_top_of_the_learning_rate_grid_waits_for_a_larger_candidate(tmp_path, capsys, at_edge):
    path = study_file(tmp_path, arms=SWEEP, selection={"candidates": ["lr0.0001", "lr0.0002", "lr0.0004"], "at_edge": at_edge})
    study = Study(load_study(path))
    finish(study, "lr0.0001-s0", 0.60, 0.50)
    finish(study, "lr0.0002-s0", 0.60, 0.52)
    finish(study, "lr0.0004-s0", 0.60, 0.55)  # the best is the largest rate tried: a larger one may be better still
    Study(load_study(path), read_only=True).plan()  # --plan makes the pick in memory and writes nothing
    assert not (study.results / "selection.json").exists()
    sel = study.selection(study.spec.selection[0])
    assert sel["selected"] == "lr0.0004"
    assert sel["at_edge"] == {"key": "training.learning_rate", "value": 4e-4, "side": "largest"}
    assert "has the largest training.learning_rate the candidates try (0.0004)" in capsys.readouterr().out
    if at_edge == "stop":
        assert study.picks() == {} and study.pending_selection() == ["tuned"]
        assert "the arms from this selection wait until a candidate beyond it is added" in study.plan()[1]
        study.write_report = lambda: None  # the stand-in results hold only what the selection reads
        assert study.run_all() == 3  # nothing left that may run: the tuned arm waits, and the log says why
        assert "the arms from this selection wait until a candidate beyond it is added" in capsys.readouterr().out
    else:
        assert study.picks() == {"": "lr0.0004"} and "tuned-s1" in {r.name for r in study.runs()}
    # a pick inside the grid goes on whatever at_edge says
    finish(study, "lr0.0002-s0", 0.60, 0.56)
    sel = study.selection(study.spec.selection[0])
    assert sel["selected"] == "lr0.0002" and sel["at_edge"] is None and study.picks() == {"": "lr0.0002"}


def test_no_edge_when_the_candidates_differ_in_more_than_one_number(tmp_path):
    arms = [{"name": f"c{i}", "overrides": [f"training.learning_rate={i}e-4", f"alignment.hidden_weight={i}"]}
            for i in (1, 2, 3)] + [{"name": "best", "from_selection": True}]
    study = Study(load_study(study_file(tmp_path, arms=arms, selection={"candidates": ["c1", "c2", "c3"]})))
    for i in (1, 2, 3):
        finish(study, f"c{i}-s0", 0.60, 0.5 + i / 100)
    assert study.selection(study.spec.selection[0])["at_edge"] is None and study.picks() == {"": "c3"}


@pytest.mark.parametrize("change, message", [
    ({"arms": PER_ARM, "selection": [{"candidates": ["grouped_lr0.0001"]}, {"candidates": ["shuffled_lr0.0001"]}]},
     "selection[0].name' must name each of several selections"),
    ({"arms": PER_ARM, "selection": [{"name": "grouped", "candidates": ["grouped_lr0.0001"]}]},
     "arms[5].from_selection' names no selection: 'shuffled'"),
    ({"arms": [*PER_ARM[:4], {"name": "x", "from_selection": True}], "selection": PER_ARM_SELECTIONS},
     "'true' needs exactly one selection"),
    ({"arms": [{"name": "a", "overrides": ["batch.mdoe=grouped"]}], "selection": None},
     "unknown config key 'batch.mdoe'"),
    ({"arms": [{"name": "a", "seeds": [0, 0]}], "selection": None}, "arms[0].seeds"),
    ({"arms": [{"name": "a", "twin": "nobody"}], "selection": None}, "arms[0].twin"),
    ({"training": ["training.max_steps=4"]}, "training.save_steps"),
    ({"selection": {"candidates": ["ghost"], "baseline": "shuffled"}}, "'ghost' must name a trained arm"),
    ({"selection": {"candidates": ["grouped"], "at_edge": "warn"}}, "'selection.at_edge' must be stop or go_on"),
    ({"eval": {"batch_sise": 3}}, "unknown config key 'eval.batch_sise'; did you mean 'eval.batch_size'?"),
    ({"curve": {"steps": "10"}}, "config key 'curve.steps' has the wrong type"),
    # read by the same OmegaConf schema and messages as a training config: file and key named
    ({"arms": [ARMS[0], {"nmae": "x"}]}, "unknown config key 'arms[1].nmae'; did you mean 'arms[1].name'?"),
    ({"selection": {"candidates": ["grouped"], "metrc": "unseen_mean"}},
     "unknown config key 'selection[0].metrc'; did you mean 'selection[0].metric'?"),
    ({"source": "x.yaml"}, "unknown config key 'source'"),  # set by load_study, not a key
    ({"arms": [ARMS[0], {"name": "a", "seeds": [0, True]}]}, "config key 'arms[1].seeds' must be a list of int, got [0, True]"),
    ({"bootstrap": "many"}, "config key 'bootstrap' has the wrong type"),
    ({"training": [["training.max_steps=4"]]}, "config key 'training' must be a list of str"),
    ({"eval": {"ood_tasks": [{"a": 1}]}}, "config key 'eval.ood_tasks' must be a list of str"),
    ({"timing": {"step_s": {"grouped": "slow"}}}, "config key 'timing.step_s.grouped' has the wrong type"),
    ({"arms": [{**ARMS[0], "adopt": {"dev": ["a"]}}]}, "config key 'arms[0].adopt.dev' has the wrong type"),
    ({"data": "builtin"}, "config key 'data' has the wrong type"),
    ({"arms": {"name": "a"}}, "config key 'arms' has the wrong type"),
    ({"arms": [ARMS[0], "grouped"]}, "config key 'arms[1]' has the wrong type"),
    ({"selection": "grouped"}, "config key 'selection' has the wrong type"),
    ({"arms": None}, "config key 'arms' may not be empty"),
    ({"arms": [ARMS[0], {"name": None}]}, "config key 'arms[1].name' may not be empty"),
    ({"data": {"train_qa": None}}, "config key 'data.train_qa' may not be empty"),
    # a mapping replaces a dict-valued default whole: the modes it does not time are not timed
    ({"timing": {"step_s": {"grouped": 4.5}}}, "'timing.step_s' has no time for batch.mode=shuffled"),
])
def test_bad_study_files_are_refused_before_any_work(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        load_study(study_file(tmp_path, **change))
    assert message in str(e.value) and "study.yaml" in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_a_result_made_with_other_settings_is_not_taken_as_finished(tmp_path, capsys):
    study = Study(load_study(study_file(tmp_path)))
    finish(study, "grouped-s0", 0.5, 0.5)
    run = next(r for r in study.runs() if r.name == "grouped-s0")
    assert study.finished(run)
    changed = Study(load_study(study_file(tmp_path, training=["training.max_steps=8", "training.save_steps=2"])))
    assert not changed.finished(next(r for r in changed.runs() if r.name == "grouped-s0"))
    assert "made with other settings" in capsys.readouterr().out
    other_eval = Study(load_study(study_file(tmp_path, eval={"max_new_tokens": 8})))
    assert not other_eval.finished(next(r for r in other_eval.runs() if r.name == "grouped-s0"))


def test_seeds_set_the_training_and_the_batch_order(tmp_path):
    spec = load_study(study_file(tmp_path))
    runs = {r.name: r for r in expand(spec)}
    assert runs["shuffled-s1"].overrides[-2:] == ["training.seed=1", "batch.seed=1"]
    assert runs["shuffled-s0"].dev and not runs["shuffled-s1"].dev  # dev: first seed only by default


def test_test_pairs_run_seed_by_seed_beside_their_twin(tmp_path):
    arms = [{"name": "base", "train": False, "test": True},
            {"name": "dpo_shuffled", "overrides": ["objective.name=dpo"], "seeds": [0, 1], "test": True},
            {"name": "dpo_best", "overrides": ["objective.name=dpo"], "seeds": [0, 1], "test": True,
             "twin": "dpo_shuffled"},
            {"name": "ablation", "seeds": [0], "twin": "dpo_shuffled"}]  # dev only: not a test pair
    runs = expand(load_study(study_file(tmp_path, arms=arms, selection=None)))
    assert [r.name for r in runs] == ["base", "dpo_shuffled-s0", "dpo_best-s0", "dpo_shuffled-s1", "dpo_best-s1",
                                      "ablation-s0"]


def test_commit_takes_exactly_the_run_files_and_nothing_staged_beside_them(tmp_path):
    import subprocess

    from bcat.study.runner import git_commit

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "other.txt").write_text("staged by someone else\n")
    git("add", "other.txt")
    results = tmp_path / "results" / "study"
    (results / "runs" / "a-s0").mkdir(parents=True)
    (results / "a-s0.json").write_text("{}\n")
    (results / "runs" / "a-s0" / "metrics.json").write_text("{}\n")
    git_commit([results / "a-s0.json", results / "runs" / "a-s0"], "study: a-s0", results)
    assert git("log", "--format=%s") == "study: a-s0\n"
    assert sorted(git("show", "--name-only", "--format=", "HEAD").split()) == [
        "results/study/a-s0.json", "results/study/runs/a-s0/metrics.json"]
    assert "other.txt" in git("diff", "--cached", "--name-only")  # still staged, not committed
    git_commit([results / "a-s0.json"], "study: again", results)  # nothing new: no empty commit
    assert git("log", "--format=%s").count("\n") == 1


def test_train_groups_must_make_whole_epochs(tmp_path):
    """With ``data.train_groups`` every arm's steps must cover whole epochs (or arms see different records)."""
    spec = load_study(study_file(tmp_path, data={"train_groups": 4}))  # 4 groups, 2 per micro-batch: 2 steps
    assert spec.data.train_groups == 4
    with pytest.raises(ConfigError, match=r"data.train_groups.*3 steps per epoch.*max_steps=4"):
        load_study(study_file(tmp_path, data={"train_groups": 5}))  # 3 steps per epoch: 4 steps is not whole
    pairs = Study(load_study(study_file(tmp_path, data={"train_groups": 4})))
    assert pairs.pairs != Study(load_study(study_file(tmp_path))).pairs  # another subset, another file


def test_the_pairs_are_named_by_the_content_of_their_source_not_its_path(tmp_path):
    """The same QA file in two checkouts gives the same pairs file name (the cached pairs are found), another
    file another name; the trainings' keys do not depend on it."""
    from bcat.bundled import resource

    names = {}
    for folder, text in [("a", "x"), ("b", "x"), ("c", "y")]:
        qa = tmp_path / folder / "qa.jsonl"
        qa.parent.mkdir()
        qa.write_text(resource("kb/train.jsonl").read_text(encoding="utf-8") + text, encoding="utf-8")
        study = Study(load_study(study_file(tmp_path, data={"train_qa": str(qa)})))
        names[folder] = study.pairs.name
        assert study.pairs.parent == tmp_path / "cache"
    assert names["a"] == names["b"] != names["c"]
    with pytest.raises(ConfigError, match=r"'data.train_qa' names no file"):
        load_study(study_file(tmp_path, data={"train_qa": str(tmp_path / "none.jsonl")}))


def test_pairs_command_draws_the_groups():
    from pathlib import Path

    from bcat.study.commands import pairs_argv

    assert pairs_argv(Path("qa.jsonl"), Path("p.jsonl"), 3, 120)[-2:] == ["--groups", "120"]
    assert "--groups" not in pairs_argv(Path("qa.jsonl"), Path("p.jsonl"))


@pytest.mark.parametrize("mode,arm", [("shuffled", "orpo_shuffled"), ("grouped", "orpo_best")])
def test_the_demo_trains_the_study_arms(mode, arm):
    """``bcat demo``'s two trainings (``ARMS``) resolve to the same training configs as the study's
    ordinary fine-tuning arm and its selected grouped arm (``configs/study/grid.yaml`` +
    ``results/study/selection.json``), apart from where and how long they run."""
    from pathlib import Path

    from bcat.cli.demo import ARMS
    from bcat.config import load_config

    root = Path(__file__).resolve().parents[2]
    spec = load_study(root / "configs/study/grid.yaml")
    selected = json.loads((root / "results/study/selection.json").read_text())["selected"]
    run = next(r for r in expand(spec, {"": selected}) if r.arm == arm and r.seed == 0)
    study, demo = (load_config(None, o) for o in (run.overrides, ARMS[mode]))
    for cfg in (study, demo):  # what differs by design: steps, checkpoints, seeds, the (unused) hidden loss
        cfg.training.max_steps, cfg.training.save_steps, cfg.training.snapshot_steps = 0, 0, []
        cfg.training.seed = cfg.batch.seed = 0
    assert study.alignment.hidden_weight == study.alignment.output_weight == 0
    study.alignment.hidden_loss = demo.alignment.hidden_loss
    assert study.batch.mode == mode and study == demo


@pytest.mark.parametrize("text, message", [
    ("name: a\nname: b\narms: [{name: x}]\n", r"study.yaml:2: .*duplicate"),
    ("name: ${oc.env:HOME}\narms: [{name: x}]\n", r"study.yaml:1: .*interpolation"),
    ("name: a\narms:\n  - name: ???\n", r"study.yaml:3: .\?\?\?. is OmegaConf's mark of a missing value"),
    ("- name: a\n", r"study.yaml: the top level must be a mapping"),
])
def test_a_study_file_is_read_as_strictly_as_a_config(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_the_study_file_shorthands(tmp_path):
    """``from_selection: true`` is the only selection and ``false`` none; ``selection`` may be one mapping,
    a list of them or empty; sections keep the defaults of the keys they leave out."""
    spec = load_study(study_file(tmp_path, eval={"max_new_tokens": 8}))
    arms = {a.name: a for a in spec.arms}
    assert arms["best"].from_selection == "" and arms["grouped"].from_selection is None
    assert [s.candidates for s in spec.selection] == [["grouped", "both"]] and spec.selection[0].name == ""
    assert (spec.eval.max_new_tokens, spec.eval.batch_size) == (8, 12)
    one_arm = {"arms": [{"name": "a", "from_selection": False}]}
    assert load_study(study_file(tmp_path, **one_arm, selection=None)).arms[0].from_selection is None
    assert load_study(study_file(tmp_path, **one_arm, selection=[])).selection == []
    two = load_study(study_file(tmp_path, arms=PER_ARM, selection=PER_ARM_SELECTIONS))
    assert [s.name for s in two.selection] == [s["name"] for s in PER_ARM_SELECTIONS]
    assert two.source == str(tmp_path / "study.yaml")


@pytest.mark.parametrize("grid", ["grid.yaml", "grid-8g.yaml"])
def test_the_committed_study_runs_are_what_their_grid_trains_now(grid, monkeypatch):
    """Every committed run result still counts as finished (its key is unchanged), and its grid, read with
    today's code, resolves to the training config that run recorded: a change of ``bcat train``'s defaults
    (or of ``STUDY_BASE``) must neither re-key finished runs nor change what their arms mean."""
    import dataclasses
    from pathlib import Path

    from bcat.config import load_config

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    study = Study(load_study(root / "configs/study" / grid), read_only=True, echo=lambda _: None)
    done = [r for r in study.runs() if r.trained and study.result_json(r).is_file()]
    assert len(done) >= 9
    for run in done:
        assert study.finished(run), run.name
        recorded = yaml.safe_load((study.result_dir(run) / "train" / "config.yaml").read_text(encoding="utf-8"))
        now = dataclasses.asdict(load_config(None, run.overrides))
        if now["batch"]["mode"] in ("no_anchor", "monolingual"):  # alignment terms are identically 0 there: an early
            del recorded["alignment"], now["alignment"]           # run kept the then-default weights 3 and 2
        for section in set(recorded) & {"batch", "objective", "alignment", "training"}:
            shared = set(recorded[section]) & set(now[section]) - {"output_dir"}
            assert {k: recorded[section][k] for k in shared} == {k: now[section][k] for k in shared}, (run.name, section)
