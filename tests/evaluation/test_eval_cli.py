"""``bcat eval``, ``bcat compare`` and ``bcat report`` end to end on the tiny random model."""

from __future__ import annotations

import json
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
    for name, model, extra in [("plain", tiny_model_dir, ["--data", str(data)]),
                               ("chat", tiny_chat_model_dir, ["--data", str(data), "--chat-template", "on",
                                                              "--shots", "1"]),
                               ("small", tiny_model_dir, ["--data", str(small), "--unseen", "th"])]:
        out[name] = root / name
        assert main(["eval", "--model", str(model), "--output", str(out[name]), *FAST, *extra]) == 0
    return out


def test_eval_writes_metrics_and_predictions(runs):
    metrics = json.loads((runs["plain"] / "metrics.json").read_text(encoding="utf-8"))
    for key in ("per_language", "english", "non_english_mean", "gap", "unseen_mean", "ci", "all_languages_correct",
                "model", "data_fingerprint", "items", "items_sha256", "languages"):
        assert key in metrics, key
    assert metrics["languages"] == {"anchor": "en", "seen": ["en", "fr", "hi", "ja"], "unseen": ["th"]}
    for lang in QA:
        per = metrics["per_language"][lang]
        assert per["n"] == 3 and 0 <= per["accuracy"] <= 1 and 0 <= per["chrf3_recall"] <= 1
        assert {"answer_language_rate", "consistency_with_en"} <= set(per)
    assert metrics["ci"]["gap"] is not None and metrics["ci"]["resamples"] == 200
    assert len(metrics["items"]) == 15 and metrics["prompt_format"] == "plain"
    import hashlib

    assert metrics["data_fingerprint"] == hashlib.sha256(runs["data"].read_bytes()).hexdigest()
    preds = [json.loads(l) for l in (runs["plain"] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == 15
    for p in preds:
        assert {"group", "lang", "prompt", "prediction", "answers", "correct", "chrf3_recall"} <= set(p)
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


def test_compare_same_items(runs, capsys):
    assert main(["compare", str(runs["plain"]), str(runs["chat"]), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "McNemar p" in printed and "th*" in printed
    comparison = json.loads((runs["chat"] / "comparison.json").read_text(encoding="utf-8"))
    assert set(comparison["per_language"]) == set(QA) and comparison["n_items"] == 15
    for r in comparison["per_language"].values():
        assert r["verdict"] in ("better", "worse", "no significant change") and 0 <= r["mcnemar_p"] <= 1
    assert "gap" in comparison["headline"]
    # the chat run used other prompts: said under the table and recorded
    assert comparison["option_differences"] == {"chat_template": ["off", "on"], "shots": [0, 1]}
    assert "note: evaluated with different --shots: A 0, B 1" in printed


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
    assert main(["report", str(runs["plain"]), str(runs["chat"]), "--output", str(out), "--bootstrap", "100"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 3
    for lang in ("en English", "fr French", "hi Hindi", "ja Japanese", "th Thai (unseen)"):
        assert lang in page and lang in md
    assert "McNemar p" in page and "no significant change" in page  # the two-run verdict table
    assert "arith" in page and "retrieval" in md and "0.125" in page and "layer: 2" in page
    assert "skipped: not built" in md
    for png in ("headline.png", "accuracy.png", "answer_language.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md


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
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
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
