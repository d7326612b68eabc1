"""Evaluation accepts the language tags training accepts: ``pt-BR`` and ``zh-Hans`` take their
language subtag's prompt wording (and say so), a user's wording file covers any language, and
scoring never needs wording."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import write_jsonl

from bcat.cli import main

FAST = ["--max-new-tokens", "3", "--bootstrap", "50", "--batch-size", "4"]
QUESTIONS = {
    "en": ("How long is the warranty?", "The warranty lasts {n} months.", "{n} months"),
    "pt-BR": ("Quanto tempo dura a garantia?", "A garantia dura {n} meses.", "{n} meses"),
    "zh-Hans": ("保修期多长？", "保修期为{n}个月。", "{n}个月"),
    "sw": ("Dhamana ni ya muda gani?", "Dhamana ni miezi {n}.", "miezi {n}"),
}


def records(langs) -> list[dict]:
    return [{"group": f"g{g}", "lang": lang, "question": q, "passages": [p.format(n=12 * (g + 1)),
             p.format(n=12 * (g + 1) + 5)], "answers": [a.format(n=12 * (g + 1))]}
            for g in range(2) for lang, (q, p, a) in QUESTIONS.items() if lang in langs]


def test_region_and_script_tags_take_their_subtags_wording_and_say_so(tmp_path, tiny_model_dir, caplog):
    data = write_jsonl(tmp_path / "qa.jsonl", records(["en", "pt-BR", "zh-Hans"]))
    with caplog.at_level(logging.INFO):
        assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "o"),
                     *FAST]) == 0
    assert "prompt wording for pt-BR: bundled, by language subtag (pt)" in caplog.text
    assert "prompt wording for zh-Hans: bundled, by language subtag (zh)" in caplog.text
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["options"]["prompt_wording"] == {"en": "bundled", "pt-BR": "bundled, by language subtag (pt)",
                                                    "zh-Hans": "bundled, by language subtag (zh)"}
    assert set(metrics["per_language"]) == {"en", "pt-BR", "zh-Hans"}
    prompts = {p["lang"]: p["prompt"] for p in map(json.loads, (tmp_path / "o" / "predictions.jsonl").open())}
    assert "Pergunta: Quanto tempo" in prompts["pt-BR"] and "问题：保修期多长？" in prompts["zh-Hans"]

    # the report names each language the same way in every table
    assert main(["report", str(tmp_path / "o"), "--output", str(tmp_path / "r"), "--bootstrap", "50"]) == 0
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    rows = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if line.startswith("| ")]
    for code, label in (("pt-BR", "pt-BR Portuguese (Brazil)"), ("zh-Hans", "zh-Hans Chinese (Simplified)")):
        named = [r for r in rows if r.startswith(code)]
        assert len(named) >= 3 and set(named) == {label}, named


def test_a_language_without_wording_is_refused_naming_it_and_the_option(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", records(["en", "sw"]))
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "o"),
                 *FAST]) == 2
    err = capsys.readouterr().err
    assert "no prompt wording for language 'sw'" in err and "--instructions FILE.tsv" in err
    assert not (tmp_path / "o").exists()  # refused before any model work

    wording = tmp_path / "sw.tsv"
    wording.write_text("lang\tpassage\tquestion\tanswer\tinstruction\n"
                       "sw\tKifungu {n}:\tSwali:\tJibu:\tJibu swali kwa kutumia vifungu tu.\n", encoding="utf-8")
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--instructions", str(wording), *FAST]) == 0
    prompts = {p["lang"]: p["prompt"] for p in map(json.loads, (tmp_path / "o" / "predictions.jsonl").open())}
    assert prompts["sw"].startswith("Jibu swali kwa kutumia vifungu tu.\n\nKifungu 1: Dhamana")
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["options"]["prompt_wording"]["sw"] == str(wording)


def test_scoring_needs_no_wording(tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", records(["en", "sw", "pt-BR"]))
    answers = [{"group": r["group"], "lang": r["lang"], "prediction": r["answers"][0]} for r in records(["en", "sw", "pt-BR"])]
    pred = write_jsonl(tmp_path / "answers.jsonl", answers)
    assert main(["score", "--data", str(data), "--predictions", str(pred), "--output", str(tmp_path / "s"),
                 "--bootstrap", "50"]) == 0
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text(encoding="utf-8"))
    assert {l: v["strict_accuracy"] for l, v in metrics["per_language"].items()} == {"en": 1.0, "sw": 1.0, "pt-BR": 1.0}


@pytest.mark.parametrize("lang, text, expected", [("pt-BR", "A garantia dura vinte e quatro meses", True),
                                                  ("zh-Hans", "二十四个月", True),
                                                  ("pt-BR", "The warranty lasts two years", False)])
def test_language_id_judges_a_tag_by_its_language_subtag(lang, text, expected):
    from bcat.evaluation.metrics import LanguageIdentifier

    assert LanguageIdentifier([lang, "en"]).language_ok(text, lang) is expected
