"""Bad data files (real files under ``fixtures/``) through ``bcat train``: exit 2, one message naming the file,
the line and the field, no traceback, and nothing written (the output directory is never created)."""

from __future__ import annotations

import pytest
from reliability.support import FIXTURES, assert_clean_failure, tree

from bcat.errors import DataError

# (fixture file, objective, extra overrides, line (None: a whole-file problem), field, words in the message)
BAD = [
    ("not_json.jsonl", "dpo", [], 2, None, "not valid JSON"),
    ("truncated_last_line.jsonl", "dpo", [], 2, None, "last line looks truncated"),
    ("invalid_utf8.jsonl", "dpo", [], 2, None, "not valid UTF-8"),
    ("bom.jsonl", "dpo", [], 1, None, "byte-order mark"),
    ("not_an_object.jsonl", "dpo", [], 2, None, "must be a JSON object"),
    ("missing_group.jsonl", "dpo", [], 2, "group", "non-empty string"),
    ("mistyped_group.jsonl", "dpo", [], 2, "group", "non-empty string"),
    ("missing_chosen.jsonl", "dpo", [], 2, "chosen", "is missing"),
    ("mistyped_lang.jsonl", "orpo", [], 2, "lang", "language code"),
    ("mistyped_rejected.jsonl", "dpo", [], 2, "rejected", "must be a string or a list of messages"),
    ("empty_prompt.jsonl", "dpo", [], 2, "prompt", "is empty"),
    ("whitespace_chosen.jsonl", "orpo", [], 2, "chosen", "is empty"),
    ("unknown_lang.jsonl", "dpo", [], 2, "lang", "unknown or malformed language code 'xx'"),
    ("malformed_lang.jsonl", "dpo", [], 2, "lang", "unknown or malformed language code 'fr_FR'"),
    ("duplicate_group_lang.jsonl", "dpo", [], 3, "lang", "duplicate (group, lang)"),
    ("group_without_anchor.jsonl", "dpo", [], 3, "group", "no record in the anchor language 'en'"),
    ("chosen_equals_rejected.jsonl", "orpo", [], 2, "rejected", "identical to 'chosen'"),
    ("completion_too_long.jsonl", "dpo", ["data.max_length=16"], 2, "chosen", "does not fit data.max_length=16"),
    ("no_group_two_languages.jsonl", "dpo", [], None, "group", "no group has two languages"),
    ("sft_record_in_preference_data.jsonl", "dpo", [], 2, "completion", "SFT record in preference data"),
    ("preference_record_in_sft_data.jsonl", "sft", [], 2, "chosen", "preference record in SFT data"),
    ("mixed_fields_in_one_record.jsonl", "orpo", [], 2, "completion", "mixes SFT"),
    ("empty.jsonl", "dpo", [], None, None, "no records"),
    ("blank_lines_only.jsonl", "sft", [], None, None, "no records"),
    ("empty_completion_sft.jsonl", "sft", [], 1, "completion", "is empty"),
    ("bad_message.jsonl", "dpo", [], 2, "chosen[0]", "'role' and 'content'"),
    ("not_parquet.parquet", "dpo", [], None, None, "not a readable Parquet file"),
    ("lone_surrogate.jsonl", "dpo", [], 2, "chosen", "lone surrogate"),
    ("deeply_nested.jsonl", "dpo", [], 2, None, "nested too deeply"),
    ("huge_integer.jsonl", "dpo", [], 2, "group", "an integer of 5000 digits"),
]


@pytest.mark.parametrize("name,objective,extra,line,field,words", BAD, ids=[b[0] for b in BAD])
def test_bad_data_file_is_refused_by_train(tmp_path, train, name, objective, extra, line, field, words):
    data = FIXTURES / name
    assert data.exists(), f"fixture {name} is missing"
    fixtures_before = tree(FIXTURES)
    out = tmp_path / "out"
    result = train(out, data, f"objective.name={objective}", *extra)
    where = f"{data}:{line}:" if line is not None else f"{data}:"
    assert_clean_failure(result, where, words, *([f"field '{field}'"] if field else []))
    assert not out.exists()
    assert tree(tmp_path) == set(), "nothing may be written next to the output directory either"
    assert tree(FIXTURES) == fixtures_before


def test_every_fixture_file_is_exercised():
    used = {b[0] for b in BAD}
    present = {p.name for p in FIXTURES.iterdir() if p.name not in ("README.md", ".gitattributes")}
    assert present == used


def test_missing_data_file(tmp_path, train):
    out = tmp_path / "out"
    assert_clean_failure(train(out, tmp_path / "nope.jsonl"), f"{tmp_path / 'nope.jsonl'}:", "file not found")
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path, train):
    """``--debug`` re-raises the error, so the traceback is there for whoever wants it."""
    with pytest.raises(DataError, match="unknown or malformed language code"):
        train(tmp_path / "out", FIXTURES / "unknown_lang.jsonl", "objective.name=dpo", debug=True)
    assert not (tmp_path / "out").exists()
