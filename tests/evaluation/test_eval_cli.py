"""``bcat eval``, ``bcat compare`` and ``bcat report`` end to end on the tiny random model."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest
from helpers import QA, qa_records, write_jsonl

from bcat.cli import main

FAST = ["--max-new-tokens", "4", "--bootstrap", "200", "--batch-size", "4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_chat_model_dir):
    """Three eval directories: plain, chat + 1 shot (same items), and one on fewer groups and languages."""
    root = tmp_path_factory.mktemp("evalruns")
    data = write_jsonl(root / "qa.jsonl", qa_records())
    small = write_jsonl(root / "small.jsonl", [r for r in qa_records(2) if r["lang"] in ("en", "fr", "th")])
    out = {"data": data}
    for name, model, extra in [("plain", tiny_model_dir, ["--data", str(data), "--unseen", "th"]),
                               ("chat", tiny_chat_model_dir, ["--data", str(data), "--chat-template", "on",
                                                              "--shots", "1", "--unseen", "th"]),
                               ("small", tiny_model_dir, ["--data", str(small), "--unseen", "th"])]:
        out[name] = root / name
        assert main(["eval", "--model", str(model), "--output", str(out[name]), *FAST, *extra]) == 0
    return out


def test_eval_writes_metrics_and_predictions(runs):
    metrics = json.loads((runs["plain"] / "metrics.json").read_text(encoding="utf-8"))
    for key in ("per_language", "english", "non_english_mean", "gap", "unseen_mean", "ci", "all_languages_correct",
                "model", "data_fingerprint", "items", "items_sha256", "languages", "secondary"):
        assert key in metrics, key
    assert metrics["headline_metric"] == "strict_accuracy"
    languages = metrics["languages"]
    assert {k: languages[k] for k in ("anchor", "seen", "unseen")} == {
        "anchor": "en", "seen": ["en", "fr", "hi", "ja"], "unseen": ["th"]}
    assert languages["source"] == "options: seen languages: all but --unseen"  # where the split came from, said
    for lang in QA:
        per = metrics["per_language"][lang]
        assert per["n"] == 3 and all(0 <= per[m] <= 1 for m in ("strict_accuracy", "contains_accuracy",
                                                                   "exact_match", "chrf"))
        assert per["strict_accuracy"] <= per["contains_accuracy"]
        assert {"answer_language_rate", "both_correct_with_en", "same_correctness_as_en", "same_answer_as_en"} <= set(per)
    assert metrics["ci"]["gap"] is not None and metrics["ci"]["resamples"] == 200
    assert len(metrics["items"]) == 15 and metrics["prompt_format"] == "plain"
    import hashlib

    assert metrics["data_fingerprint"] == hashlib.sha256(runs["data"].read_bytes()).hexdigest()
    preds = [json.loads(l) for l in (runs["plain"] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == 15
    for p in preds:
        assert {"group", "lang", "question", "prompt", "prediction", "answers", "wrong_values", "strict_correct",
                "contains_answer", "exact_match", "named_wrong_values", "chrf"} <= set(p)
        assert "\n" not in p["prediction"]
        if p["group"] == "g2":  # answer_neutral: language not checked
            assert p["language_ok"] is None
    fr = next(p for p in preds if p["lang"] == "fr")
    assert fr["prompt"].startswith("Réponds à la question") and fr["prompt"].endswith("Réponse :")


def test_eval_chat_template_and_shots(runs):
    metrics = json.loads((runs["chat"] / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["prompt_format"] == "chat" and metrics["options"]["shots"] == 1
    pred = json.loads((runs["chat"] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert pred["prompt"].startswith("<s><|user|>") and pred["prompt"].count("<s>") == 1
    assert pred["prompt"].count("<|assistant|>") == 2 and pred["prompt"].endswith("<|assistant|>")


def test_generation_is_independent_of_batching(tiny_model_dir):
    from bcat.evaluation.generation import greedy_generate
    from bcat.model.loading import load_for_eval

    model, tok = load_for_eval(str(tiny_model_dir))
    prompts = ["Question: How long? Answer:", "La garantie dure 24 mois. Réponse :", "保証期間は24か月です。答え："]
    one = greedy_generate(model, tok, prompts, batch_size=1, max_new_tokens=6)
    assert greedy_generate(model, tok, prompts, batch_size=3, max_new_tokens=6) == one


def test_first_line_stop(tiny_model_dir):
    import torch
    from transformers import AutoTokenizer

    from bcat.evaluation.generation import FirstLineStop

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in ("24\nQ", "\n24", "24 mo")]
    width = max(map(len, ids))
    batch = torch.tensor([[0] * (width - len(i)) + i for i in ids])
    assert FirstLineStop(tok, 0)(batch, None).tolist() == [True, False, False]


def test_compare_same_items(runs, capsys, tmp_path):
    out = tmp_path / "plain_vs_chat"
    assert main(["compare", str(runs["plain"]), str(runs["chat"]), "--bootstrap", "200", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "p Holm" in printed and "th*" in printed and "leaves training noise out" in printed
    assert not (runs["chat"] / "comparison.json").exists()  # written where asked, never into an input
    comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert set(comparison["per_language"]) == set(QA) and comparison["n_items"] == 15
    for r in comparison["per_language"].values():
        assert r["verdict"] in ("better", "worse", "no significant change") and 0 <= r["mcnemar_p"] <= 1
    assert "gap" in comparison["headline"]
    # the chat run used other prompts: said under the table and recorded
    assert comparison["option_differences"] == {"chat_template": ["off", "on"], "shots": [0, 1]}
    assert "note: evaluated with different --shots: A 0, B 1" in printed


def test_compare_pairs_seeds_given_as_comma_separated_lists(runs, capsys, tmp_path):
    seeds_a, seeds_b = f"{runs['plain']},{runs['plain']}", f"{runs['chat']},{runs['chat']}"
    assert main(["compare", seeds_a, seeds_b, "--bootstrap", "200", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "hierarchical bootstrap" in printed and "B - A per seed pair" in printed
    comparison = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))
    assert comparison["seeds_pooled"] == 2 and len(comparison["per_seed"]) == 2
    assert "ci_groups_only" in comparison["headline"]["english"]


def test_compare_refuses_different_items(runs, capsys, tmp_path):
    assert main(["compare", str(runs["plain"]), str(runs["small"]), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "different items" in err and "only in the first: g0/hi" in err and "0 only in the second" in err
    assert not (tmp_path / "comparison.json").exists()


def test_report_renders(runs, tmp_path):
    ood_metrics = json.loads((runs["chat"] / "metrics.json").read_text(encoding="utf-8"))
    ood_metrics["ood"] = {"arith": {"en": {"accuracy": 0.25, "n": 4}, "fr": {"accuracy": 0.125, "n": 4}},
                          "retrieval": {"fr": {"top1": 0.5, "n": 31}, "layer": 2},
                          "paraphrase": {"skipped": "not built"}}
    (runs["chat"] / "metrics.json").write_text(json.dumps(ood_metrics), encoding="utf-8")
    out = tmp_path / "report"
    train_run = fake_training_run(tmp_path / "train")
    assert main(["report", str(runs["plain"]), str(runs["chat"]), "--output", str(out), "--bootstrap", "100",
                 "--train-run", str(train_run)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 4
    for lang in ("en English", "fr French", "hi Hindi", "ja Japanese", "th Thai (unseen)"):
        assert lang in page and lang in md
    assert "p (Holm)" in page and "no significant change" in page  # the two-run verdict table
    assert "Metric: strict_accuracy (the headline)" in md and "Headline: strict accuracy" in md
    assert "strict accuracy (headline)" in md and "contains" in md  # every scorer, the headline named
    assert "arith" in page and "retrieval" in md and "0.125" in page and "layer: 2" in page
    assert "skipped: not built" in md
    for png in ("headline.png", "accuracy.png", "answer_language.png", "training_loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md
    # example answers: per language, the question, the gold answer and each run's answer and verdict
    examples = md[md.index("## Example answers"):md.index("## Training loss")]
    preds = [json.loads(l) for l in (runs["plain"] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    ja = [p for p in preds if p["lang"] == "ja"]
    assert "### ja Japanese" in examples and ja[0]["question"] in examples and ja[0]["answers"][0] in examples
    assert len(re.findall(r"^\| g\d \|", examples, flags=re.M)) == 15  # 3 groups x 5 languages
    assert any(v in examples for v in ("| correct |", "| wrong |", "| empty |", "| also names", "| wrong value"))
    assert str(train_run) in md


def fake_training_run(run, anchor="en", languages=("en", "fr", "hi")):
    """A `bcat train` output directory without weights: config.yaml, training_summary.json, train_log.jsonl."""
    from bcat.config import load_config, to_yaml

    run.mkdir(parents=True)
    cfg = load_config(None, [f"data.anchor={anchor}", f"data.languages=[{','.join(languages)}]"])
    (run / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    (run / "training_summary.json").write_text(json.dumps({"languages": sorted(languages)}), encoding="utf-8")
    log = [{"step": s, "loss": 2.0 / s, "main_per_language": {l: (1.0 + k) / s for k, l in enumerate(languages)
                                                               if (s + k) % 3}} for s in range(1, 9)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log) + '{"step": 9, "lo',
                                         encoding="utf-8")  # a line cut short by a kill is skipped
    return run


def test_training_runs_are_found_next_to_the_model(tmp_path):
    from pathlib import Path

    from bcat.evaluation.compare import Run
    from bcat.evaluation.scoring import training_run_dir
    from bcat.report.loss import read_train_log, training_logs

    run = fake_training_run(tmp_path / "runs" / "bcat", anchor="fr", languages=("fr", "en", "ja"))
    (run / "model").mkdir()
    assert training_run_dir(str(run / "model")) == run and training_run_dir(str(run)) == run
    assert training_run_dir("builtin:gemma3-270m") is None and training_run_dir(str(tmp_path)) is None
    logs = training_logs([Run(Path("e1"), {"model": str(run / "model")}, {}), Run(Path("e2"), {"model": str(run)}, {})])
    assert len(logs) == 1 and logs[0].path == run and len(logs[0].entries) == 8
    assert logs[0].languages() == ["fr", "en", "ja"]  # the anchor first
    with pytest.raises(Exception, match="no train_log.jsonl"):
        read_train_log(tmp_path)


def test_report_single_run_defaults_to_its_directory(runs):
    assert main(["report", str(runs["small"]), "--bootstrap", "50"]) == 0
    assert (runs["small"] / "report.html").exists() and "Comparison" not in (runs["small"] / "report.md").read_text()


def test_input_errors_exit_2(tmp_path, tiny_model_dir, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [qa_records(1)[0], {**qa_records(1)[1], "answers": []}])
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert f"{bad}:2: field 'answers'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # validated before any work
    assert main(["eval", "--model", str(tmp_path / "none"), "--data", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", "rag,xyz", "--output", str(tmp_path / "o")]) == 2
    assert "unknown suite xyz" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(tmp_path), "--output", str(tmp_path / "c")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_builtin_data_is_the_bundled_test_split(tmp_path, tiny_model_dir, capsys):
    from bcat.evaluation.evaluate import resolve_data

    try:
        path = resolve_data("builtin")
    except Exception as e:  # not bundled yet: a clear error, exit code 2
        assert "bundled test split" in str(e)
        assert main(["eval", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o")]) == 2
    else:
        assert path.name == "test.jsonl" and path.parent.name == "kb"


def test_ood_suite_is_called_or_reported_missing(tmp_path, tiny_model_dir, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("bcat.evaluation.ood.suite")
    fake.OOD_LANGS = ("en", "fr")

    def run_ood(model, tokenizer, languages=None, tasks=("arith",), batch_size=8, limit=None):
        calls.append({"languages": languages, "tasks": tasks, "batch_size": batch_size, "limit": limit})
        return {"arith": {"en": {"accuracy": 1.0, "n": 2}}}

    fake.run_ood = run_ood
    monkeypatch.setitem(sys.modules, "bcat.evaluation.ood.suite", fake)
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", "ood", "--output", str(tmp_path / "o"),
                 "--languages", "en,th", "--ood-tasks", "arith", "--limit", "2", "--batch-size", "3"]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["ood"] == {"arith": {"en": {"accuracy": 1.0, "n": 2}}} and "per_language" not in metrics
    assert calls == [{"languages": ["en"], "tasks": ("arith",), "batch_size": 3, "limit": 2}]
    monkeypatch.setitem(sys.modules, "bcat.evaluation.ood.suite", None)  # the module is absent
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", "ood", "--output", str(tmp_path / "p")]) == 2
    assert "out-of-domain suite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- trimmed vocabulary

def test_trimmed_generation_equals_full_model_restricted_to_kept_ids(tmp_path, tiny_model_dir):
    """Eval on a trimmed vocabulary == the full model with every dropped id masked (greedy, fp32)."""
    from bcat.data.rag import build_prompts, load_items
    from bcat.evaluation.evaluate import trim_to_prompts
    from bcat.evaluation.generation import greedy_generate
    from bcat.model.loading import load_for_eval
    from bcat.model.trim import KeptIdsLogitsProcessor

    full, tok = load_for_eval(str(tiny_model_dir))
    trimmed, _ = load_for_eval(str(tiny_model_dir))
    items = [i for i in load_items(write_jsonl(tmp_path / "qa.jsonl", qa_records()))
             if i.lang in ("en", "fr")]
    prompts = build_prompts(items, tok)
    vocab = trim_to_prompts(trimmed, tok, prompts)
    assert len(vocab) < len(tok)  # a real trim: the test could tell a wrong mapping apart
    got = greedy_generate(trimmed, tok, prompts, vocab=vocab, max_new_tokens=8, batch_size=4)
    expected = greedy_generate(full, tok, prompts, logits_processor=[KeptIdsLogitsProcessor(vocab.kept)],
                               max_new_tokens=8, batch_size=4)
    assert got == expected and any(got)


def test_eval_trim_vocab_option(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "qa.jsonl", [r for r in qa_records(2) if r["lang"] in ("en", "fr")])
    for name, flag in (("on", ["--trim-vocab"]), ("off", [])):
        assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / name),
                     *flag, *FAST]) == 0
    on, off = (json.loads((tmp_path / m / "metrics.json").read_text()) for m in ("on", "off"))
    assert on["options"]["trim_vocab"] is True and off["options"]["trim_vocab"] is False
    assert on["vocabulary"]["of"] == 600 and 0 < on["vocabulary"]["kept"] < 600 and "vocabulary" not in off
