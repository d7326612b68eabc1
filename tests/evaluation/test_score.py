"""``bcat score``: re-scoring saved answers without a model, and where the language split comes from."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import QA, qa_records, write_jsonl

from bcat.cli import main

FAST = ["--max-new-tokens", "4", "--bootstrap", "150", "--batch-size", "4"]


def qa_with_wrong_values(n_groups: int = 3) -> list[dict]:
    """The helpers' QA records, each with the other passage's value as a wrong value."""
    records = qa_records(n_groups)
    for r in records:
        g = int(r["group"][1:])
        answer = QA[r["lang"]][2]
        r["distractor_answers"] = [[answer.format(n=12 * (g + 1) + 5), str(12 * (g + 1) + 5)]]
    return records


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("score")
    data = write_jsonl(root / "qa.jsonl", qa_with_wrong_values())
    out = root / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), *FAST]) == 0
    return data, out


def test_rescoring_an_eval_gives_the_same_files(evaluated, tmp_path):
    data, out = evaluated
    again = tmp_path / "again"
    assert main(["score", "--data", str(data), "--predictions", str(out / "predictions.jsonl"),
                 "--output", str(again)]) == 0
    assert (again / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()
    assert (again / "predictions.jsonl").read_bytes() == (out / "predictions.jsonl").read_bytes()
    assert sorted(p.name for p in again.iterdir()) == ["metrics.json", "predictions.jsonl"]  # no temporary left


def test_rescoring_is_a_fixed_point_on_varied_answers(evaluated, tmp_path):
    """The tiny model answers nothing right, so also re-score answers of every kind: right, right
    plus a wrong value, wrong, verbose, empty; scoring the result again changes no byte."""
    data, out = evaluated
    varied = tmp_path / "varied"
    shutil.copytree(out, varied)
    records = [json.loads(l) for l in (varied / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    for n, rec in enumerate(records):
        gold, wrong = rec["answers"][0], rec["wrong_values"][0][0]
        rec["raw_output"] = [gold, f"{gold} / {wrong}", wrong, f"The answer: {gold}.", ""][n % 5] + "\nQuestion:"
    write_jsonl(varied / "predictions.jsonl", records)
    first, second = tmp_path / "first", tmp_path / "second"
    for source, target in ((varied, first), (first, second)):
        assert main(["score", "--data", str(data), "--predictions", str(source / "predictions.jsonl"),
                     "--output", str(target)]) == 0
    assert (second / "metrics.json").read_bytes() == (first / "metrics.json").read_bytes()
    assert (second / "predictions.jsonl").read_bytes() == (first / "predictions.jsonl").read_bytes()
    metrics = json.loads((first / "metrics.json").read_text(encoding="utf-8"))
    total = {m: sum(v[m] * v["n"] for v in metrics["per_language"].values()) / 15
             for m in ("strict_accuracy", "contains_accuracy", "exact_match")}
    assert total == {"strict_accuracy": pytest.approx(6 / 15), "contains_accuracy": pytest.approx(9 / 15),
                     "exact_match": pytest.approx(3 / 15)}
    assert metrics["model"] == json.loads((out / "metrics.json").read_text())["model"]  # carried over


def test_scoring_bare_answers_without_an_eval(evaluated, tmp_path):
    data, out = evaluated
    eval_metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    bare = [{"group": p["group"], "lang": p["lang"], "prediction": p["raw_output"]}
            for p in map(json.loads, (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines())]
    (tmp_path / "answers").mkdir()
    answers = write_jsonl(tmp_path / "answers" / "mine.jsonl", bare[::-1])  # any order
    assert main(["score", "--data", str(data), "--predictions", str(answers), "--output", str(tmp_path / "s"),
                 "--bootstrap", "150"]) == 0
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["model"] is None and metrics["predictions"] == str(answers)
    assert metrics["per_language"] == eval_metrics["per_language"] and metrics["gap"] == eval_metrics["gap"]
    assert metrics["ci"] == eval_metrics["ci"] and metrics["items"] == eval_metrics["items"]  # the data's order
    assert "no training run" in metrics["languages"]["source"]


def test_score_overrides_the_language_split(evaluated, tmp_path):
    data, out = evaluated
    assert main(["score", "--data", str(data), "--predictions", str(out / "predictions.jsonl"),
                 "--output", str(tmp_path / "s"), "--seen", "en,fr", "--anchor", "fr"]) == 0
    languages = json.loads((tmp_path / "s" / "metrics.json").read_text(encoding="utf-8"))["languages"]
    assert languages["anchor"] == "fr" and languages["seen"] == ["fr", "en"]
    assert languages["unseen"] == ["hi", "ja", "th"]
    assert languages["source"] == "options: anchor from --anchor; seen languages from --seen"
    assert main(["score", "--data", str(data), "--predictions", str(out / "predictions.jsonl"),
                 "--output", str(tmp_path / "u"), "--unseen", "hi"]) == 0
    languages = json.loads((tmp_path / "u" / "metrics.json").read_text(encoding="utf-8"))["languages"]
    assert languages["unseen"] == ["hi"] and languages["anchor"] == "en"
    assert main(["score", "--data", str(data), "--predictions", str(out / "predictions.jsonl"),
                 "--output", str(tmp_path / "x"), "--anchor", "de"]) == 2
    assert not (tmp_path / "x").exists()


def _line(group="g0", lang="en", prediction="24 months", **kw):
    return {"group": group, "lang": lang, "prediction": prediction, **kw}


@pytest.mark.parametrize("bad, line, field, message", [
    ("{oops", 2, None, "not valid JSON"),
    ('["g0", "fr"]', 2, None, "JSON object"),
    (_line(group=None), 2, "group", "non-empty string"),
    ({"group": "g0", "prediction": "x"}, 2, "lang", "missing"),
    (_line(lang="fr", prediction=None), 2, "prediction", "must be a string"),
    (_line(lang="fr", raw_output=3), 2, "raw_output", "must be a string"),
    (_line(lang="de"), 2, "lang", r"no item \(g0, de\)"),
    (_line(group="g9"), 2, "group", r"no item \(g9, en\)"),
    (_line(), 2, "lang", r"a second prediction for \(g0, en\) \(first on line 1\)"),
])
def test_bad_predictions_name_file_line_field(evaluated, tmp_path, capsys, bad, line, field, message):
    data, _ = evaluated
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps(_line()) + "\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n",
                    encoding="utf-8")
    assert main(["score", "--data", str(data), "--predictions", str(pred), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    where = f"{pred}:{line}:" + (f" field '{field}':" if field else "")
    assert where in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()  # nothing written


def test_score_refuses_missing_and_empty_inputs(evaluated, tmp_path, capsys):
    data, _ = evaluated
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert main(["score", "--data", str(data), "--predictions", str(empty), "--output", str(tmp_path / "o")]) == 2
    assert "no predictions" in capsys.readouterr().err
    assert main(["score", "--data", str(data), "--predictions", str(tmp_path / "none.jsonl"),
                 "--output", str(tmp_path / "o")]) == 2
    assert main(["score", "--data", str(tmp_path / "none.jsonl"), "--predictions", str(empty),
                 "--output", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_compare_asks_to_rescore_old_predictions(evaluated, tmp_path, capsys):
    _, out = evaluated
    old = tmp_path / "old"
    shutil.copytree(out, old)
    lines = [json.loads(l) for l in (old / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    for rec in lines:
        rec["correct"] = rec.pop("strict_correct")  # what an older bcat eval wrote
    write_jsonl(old / "predictions.jsonl", lines)
    assert main(["compare", str(out), str(old), "--output", str(tmp_path / "c")]) == 2
    assert "bcat score" in capsys.readouterr().err


# --- the anchor and the seen languages come from the training run ----------------------------------

def _training_run(tmp_path, tiny_model_dir, overrides, trained_languages):
    from bcat.config import load_config, to_yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "config.yaml").write_text(to_yaml(load_config(None, overrides)), encoding="utf-8")
    (run / "training_summary.json").write_text(json.dumps({"languages": trained_languages}), encoding="utf-8")
    return run


def _languages(out):
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))["languages"]


def test_eval_takes_anchor_and_seen_languages_from_the_training_run(evaluated, tmp_path, tiny_model_dir, capsys):
    data, _ = evaluated
    run = _training_run(tmp_path, tiny_model_dir, ["data.anchor=fr", "data.languages=[fr,en,ja]"], ["en", "fr", "ja"])
    args = ["eval", "--data", str(data), "--languages", "en,fr,ja,th", "--limit", "2", *FAST]
    assert main([*args, "--model", str(run / "model"), "--output", str(tmp_path / "a")]) == 0
    languages = _languages(tmp_path / "a")
    assert (languages["anchor"], languages["seen"], languages["unseen"]) == ("fr", ["fr", "en", "ja"], ["th"])
    assert str(run / "config.yaml") in languages["source"] and "data.languages" in languages["source"]
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["english"] == metrics["per_language"]["fr"]["strict_accuracy"]  # the anchor's column
    # the command line may repeat the run, not contradict it: refused before any model work
    assert main([*args, "--model", str(run), "--output", str(tmp_path / "b"), "--seen", "ja,en,fr"]) == 0
    assert _languages(tmp_path / "b")["seen"] == ["fr", "en", "ja"]
    for option in (["--anchor", "en"], ["--seen", "en,th"], ["--unseen", "ja"]):
        assert main([*args, "--model", str(run), "--output", str(tmp_path / "c"), *option]) == 2
        assert f"{option[0]} " in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_eval_uses_the_trained_languages_when_data_languages_is_null(evaluated, tmp_path, tiny_model_dir):
    data, _ = evaluated
    run = _training_run(tmp_path, tiny_model_dir, [], ["en", "hi"])
    assert main(["eval", "--data", str(data), "--model", str(run / "model"), "--output", str(tmp_path / "a"),
                 "--limit", "1", *FAST]) == 0
    languages = _languages(tmp_path / "a")
    assert languages["seen"] == ["en", "hi"] and languages["unseen"] == ["fr", "ja", "th"]
    assert "training_summary.json" in languages["source"]


def test_without_a_training_run_or_options_every_language_counts_as_seen(evaluated, tmp_path, capsys):
    """Not the bundled data's seen/unseen lists: a base model on the user's data has no unseen languages."""
    data, out = evaluated
    languages = _languages(out)
    assert languages["seen"] == ["en", "fr", "hi", "ja", "th"] and languages["unseen"] == []
    assert languages["source"].startswith("the data: every evaluated language counts as seen")
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["unseen_mean"] is None
    assert main(["score", "--data", str(data), "--predictions", str(out / "predictions.jsonl"),
                 "--output", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "unseen mean n/a (no unseen languages)" in printed and "(from the data: every evaluated" in printed
    assert not re.search(r"\d\.\d{4}", printed) and "None" not in printed  # rounded for people


def test_the_bundled_split_is_used_only_for_the_builtin_model_on_the_bundled_data_and_said_so():
    from bcat.evaluation.scoring import BUNDLED_SOURCE, DATA_SOURCE, resolve_languages
    from bcat.languages import LANGUAGES, SEEN

    assert resolve_languages("builtin:gemma3-270m", list(LANGUAGES), bundled_data=True) == (
        "en", ("en", *SEEN), BUNDLED_SOURCE)
    assert resolve_languages("builtin:gemma3-270m", list(LANGUAGES), bundled_data=False)[1:] == (LANGUAGES, DATA_SOURCE)
    assert resolve_languages("some/base-model", list(LANGUAGES), bundled_data=True)[1:] == (LANGUAGES, DATA_SOURCE)


def test_a_prediction_file_that_lacks_items_is_refused_naming_them(evaluated, tmp_path, capsys):
    """Never "23 of 24 items scored" with exit 0 and a higher score: a missing answer is not skipped."""
    data, out = evaluated
    records = [json.loads(l) for l in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    for rec in records:  # every answer right ...
        rec["raw_output"] = rec["answers"][0]
    (tmp_path / "p").mkdir()
    write_jsonl(tmp_path / "p" / "predictions.jsonl", [r for r in records if (r["group"], r["lang"]) != ("g1", "fr")])
    assert main(["score", "--data", str(data), "--predictions", str(tmp_path / "p" / "predictions.jsonl"),
                 "--output", str(tmp_path / "s")]) == 2  # ... but one missing
    err = capsys.readouterr().err
    assert "no prediction for 1 of the 15 items" in err and "(g1, fr)" in err
    assert not (tmp_path / "s").exists()


def test_rescoring_a_limited_eval_scores_the_items_it_answered(evaluated, tmp_path, tiny_model_dir):
    data, _ = evaluated
    out = tmp_path / "limited"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--limit", "2", "--languages", "en,fr", *FAST]) == 0
    assert main(["score", "--data", str(data), "--predictions", str(out / "predictions.jsonl"),
                 "--output", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()


def test_compare_handles_a_run_without_a_split_and_one_with(evaluated, tmp_path, capsys):
    data, out = evaluated  # every language seen (the data)
    split = tmp_path / "split"
    assert main(["score", "--data", str(data), "--predictions", str(out / "predictions.jsonl"),
                 "--output", str(split), "--unseen", "th"]) == 0
    for a, b, unseen in ((out, split, ["th"]), (split, out, [])):
        capsys.readouterr()
        assert main(["compare", str(a), str(b), "--output", str(tmp_path / "c"), "--bootstrap", "50"]) == 0
        printed = capsys.readouterr().out
        comparison = json.loads((tmp_path / "c" / "comparison.json").read_text(encoding="utf-8"))
        assert comparison["languages"]["unseen"] == unseen and comparison["language_split_differs"]
        assert ("unseen_mean" in comparison["headline"]) == bool(unseen) and "None" not in printed
