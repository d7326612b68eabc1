"""Text that parses as JSON but no later step can take (a lone surrogate, an integer too long to convert,
nesting too deep for the parser) is refused as ``FILE:LINE: field`` with exit 2 by every command that reads
the file, before any work: ``data check``, ``train`` (in test_bad_data.py), ``eval`` (its data) and ``score``
(data and predictions); nothing is written."""

from __future__ import annotations

import json

import pytest
from helpers import qa_records, write_jsonl
from reliability.support import FIXTURES, assert_clean_failure, tree

# (what, JSON text of the bad value, field named in the message, words)
BAD_VALUES = [
    ("lone surrogate", '"24 months\\ud800"', True, "lone surrogate"),
    ("huge integer", "1" * 5000, True, "an integer of 5000 digits"),
    ("deep nesting", "[" * 5000 + "]" * 5000, False, "nested too deeply"),
]


def _with_bad_value(path, records, line, field, value_json):
    """``records`` as JSONL with ``records[line - 1][field]`` replaced by the raw JSON ``value_json``."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    rec = dict(records[line - 1], **{field: "@@"})
    lines[line - 1] = json.dumps(rec, ensure_ascii=False).replace('"@@"', value_json)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["lone_surrogate.jsonl", "deeply_nested.jsonl", "huge_integer.jsonl"])
def test_data_check_refuses(cli, name):
    result = cli("data", "check", FIXTURES / name, "--objective", "dpo")
    assert_clean_failure(result, f"{FIXTURES / name}:2:")


@pytest.mark.parametrize("what,value,named,words", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_eval_refuses_bad_data_before_work(tmp_path, cli, tiny_model_dir, what, value, named, words):
    data = _with_bad_value(tmp_path / "qa.jsonl", qa_records(), 4, "question", value)
    out = tmp_path / "out"
    result = cli("eval", "--model", tiny_model_dir, "--data", data, "--output", out)
    assert_clean_failure(result, f"{data}:4:", words, *(["field 'question'"] if named else []))
    assert not out.exists() and tree(tmp_path) == {"qa.jsonl"}


@pytest.mark.parametrize("what,value,named,words", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_score_refuses_bad_predictions_before_work(tmp_path, cli, evaluated, what, value, named, words):
    data, run = evaluated
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    bad = _with_bad_value(tmp_path / "preds.jsonl", preds, 3, "prediction", value)
    out = tmp_path / "out"
    result = cli("score", "--data", data, "--predictions", bad, "--output", out)
    assert_clean_failure(result, f"{bad}:3:", words, *(["field 'prediction'"] if named else []))
    assert tree(tmp_path) == {"preds.jsonl"}  # no output folder, no .tmp
