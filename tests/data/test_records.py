"""Data validation: each bad input is refused with file, line and field, before any work."""

from __future__ import annotations

import json

import pytest
from helpers import parallel_records, write_jsonl

from bcat.cli import main
from bcat.data.records import load_records
from bcat.errors import DataError

GOOD = {"group": "g0", "lang": "en", "prompt": "Q?", "chosen": "a", "rejected": "b"}


def lines(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs)


FR = {**GOOD, "lang": "fr"}

# (name, file content, objective, expected line, expected field, words the message must contain)
BAD = [
    ("not json", lines(GOOD, "{not json"), "dpo", 2, None, "not valid JSON"),
    ("truncated last line", lines(GOOD) + '{"group": "g0", "lang": "fr", "prom', "dpo", 2, None, "truncated"),
    ("empty file", "", "dpo", None, None, "no records"),
    ("not an object", lines(GOOD, "[1, 2]"), "dpo", 2, None, "JSON object"),
    ("missing group", lines(GOOD, {k: v for k, v in FR.items() if k != "group"}), "dpo", 2, "group", "non-empty"),
    ("mistyped lang", lines(GOOD, {**FR, "lang": 7}), "dpo", 2, "lang", "language code"),
    ("unknown lang", lines(GOOD, {**FR, "lang": "xx"}), "dpo", 2, "lang", "unknown or malformed"),
    ("malformed lang", lines(GOOD, {**FR, "lang": "fr_FR"}), "dpo", 2, "lang", "unknown or malformed"),
    ("second English as EN", lines(GOOD, {**GOOD, "lang": "EN"}), "dpo", 2, "lang", "is written 'en'"),
    ("region in lower case", lines(GOOD, {**FR, "lang": "pt-br"}), "dpo", 2, "lang", "is written 'pt-BR'"),
    ("undetermined language", lines(GOOD, {**FR, "lang": "und"}), "dpo", 2, "lang", "unknown or malformed"),
    ("message prompt, text answer", lines(GOOD, {**FR, "prompt": [{"role": "user", "content": "Q?"}]}), "dpo", 2,
     "chosen", "must both be strings or both message lists"),
    ("trailing comma on the last line", lines(GOOD) + '{"group": "g0", "lang": "fr",}\n', "dpo", 2, None,
     "Expecting property name"),
    ("missing chosen", lines(GOOD, {k: v for k, v in FR.items() if k != "chosen"}), "dpo", 2, "chosen", "missing"),
    ("empty prompt", lines(GOOD, {**FR, "prompt": "  "}), "dpo", 2, "prompt", "empty"),
    ("mistyped rejected", lines(GOOD, {**FR, "rejected": 3}), "dpo", 2, "rejected", "string or a list"),
    ("bad message", lines(GOOD, {**FR, "chosen": [{"role": "assistant"}]}), "dpo", 2, "chosen[0]", "role"),
    ("chosen == rejected", lines(GOOD, {**FR, "rejected": "a"}), "dpo", 2, "rejected", "identical"),
    ("duplicate group/lang", lines(GOOD, FR, FR), "dpo", 3, "lang", "duplicate"),
    ("group without anchor", lines(GOOD, FR, {**FR, "group": "g1"}), "dpo", 3, "group", "anchor"),
    ("no group with two languages", lines(GOOD, {**GOOD, "group": "g1"}), "dpo", None, "group", "two languages"),
    ("SFT record in preference data", lines(GOOD, {"group": "g0", "lang": "fr", "prompt": "Q", "completion": "a"}),
     "dpo", 2, "completion", "SFT record"),
    ("preference record in SFT data", lines({"group": "g0", "lang": "en", "prompt": "Q", "completion": "a"}, FR),
     "sft", 2, "chosen", "preference record"),
    ("empty completion", lines({"group": "g0", "lang": "en", "prompt": "Q", "completion": ""}), "sft", 1,
     "completion", "empty"),
]


@pytest.mark.parametrize("name,content,objective,line,field,words", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_refused_with_line_and_field(tmp_path, name, content, objective, line, field, words):
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records(path, objective)
    assert err.value.line == line and err.value.field == field
    assert words in str(err.value) and str(path) in str(err.value)


def test_invalid_utf8_and_bom(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(lines(GOOD).encode() + b'{"group": "g0", "lang": "fr", "prompt": "\xff"}\n')
    with pytest.raises(DataError, match="UTF-8") as err:
        load_records(path, "dpo")
    assert err.value.line == 2
    path.write_bytes(b"\xef\xbb\xbf" + lines(GOOD, FR).encode())
    with pytest.raises(DataError, match="byte-order mark"):
        load_records(path, "dpo")


def test_drop_groups_without_anchor_reports_count(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", parallel_records(3) + [{**FR, "group": "orphan"}])
    records, report = load_records(path, "dpo", drop_groups_without_anchor=True)
    assert report.dropped_groups_without_anchor == 1
    assert all(r.group != "orphan" for r in records)


def test_extra_fields_pass_through_and_conversational_form(tmp_path):
    recs = [{"group": 1, "lang": lang, "prompt": [{"role": "user", "content": "Q"}],
             "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}],
             "pair_type": "grounding"} for lang in ("en", "pt-BR", "zh-Hans")]
    records, report = load_records(write_jsonl(tmp_path / "d.jsonl", recs), "orpo")
    assert records[0].group == "1" and records[0].extra == {"pair_type": "grounding"}
    assert report.records_per_language == {"en": 1, "pt-BR": 1, "zh-Hans": 1}


def test_parquet_and_datasets_dir(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(parallel_records(2))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "dsdir"))
    assert load_records(tmp_path / "d.parquet", "dpo")[1].records == 6
    assert load_records(tmp_path / "dsdir", "dpo")[1].records == 6


def test_data_check_cli(tmp_path, tiny_model_dir, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", parallel_records(3, langs=("en", "fr", "de")))
    assert main(["data", "check", str(path), "--objective", "dpo", "--tokenizer", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["groups"] == 3 and report["records_per_language"] == {"de": 3, "en": 3, "fr": 3}
    assert report["token_lengths"]["completion"]["min"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines(GOOD, {**FR, "lang": "xx"}))
    assert main(["data", "check", str(bad)]) == 2
    assert f"{bad}:2: field 'lang'" in capsys.readouterr().err


def test_data_check_reads_the_kind_from_the_records(tmp_path, capsys):
    """SFT, preference and evaluation files are checked as what they are, without --objective."""
    from helpers import qa_records

    sft = write_jsonl(tmp_path / "sft.jsonl", parallel_records(2, objective="sft"))
    pref = write_jsonl(tmp_path / "pref.jsonl", parallel_records(2))
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_records(2))
    for path, kind, words in [(sft, "sft", "SFT records"), (pref, "preference", "preference records"),
                              (qa, "eval", "evaluation records")]:
        assert main(["data", "check", str(path)]) == 0, capsys.readouterr().err
        assert f"{path}: OK, {words}" in capsys.readouterr().out
        assert main(["data", "check", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["kind"] == kind
    assert main(["data", "check", str(qa), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["groups"] == 2 and report["records"] == len(qa_records(2))
    # an evaluation record with a bad field is named as `bcat eval` names it
    bad = write_jsonl(tmp_path / "bad_qa.jsonl", [qa_records(1)[0], {**qa_records(1)[1], "answers": []}])
    assert main(["data", "check", str(bad)]) == 2
    assert f"{bad}:2: field 'answers'" in capsys.readouterr().err
    # a later record of another kind is refused, and records of no known kind say what to give
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(lines(GOOD, {"group": "g0", "lang": "fr", "prompt": "Q", "completion": "a"}))
    assert main(["data", "check", str(mixed)]) == 2
    assert f"{mixed}:2: field 'completion': SFT record in preference data" in capsys.readouterr().err
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(lines({"group": "g0", "lang": "en", "text": "hello"}))
    assert main(["data", "check", str(unknown)]) == 2
    assert f"{unknown}:1: cannot tell what the records are for" in capsys.readouterr().err


def test_data_check_hints_name_its_own_flags(tmp_path, capsys):
    no_anchor = tmp_path / "a.jsonl"
    no_anchor.write_text(lines(GOOD, FR, {**FR, "group": "g1"}))
    assert main(["data", "check", str(no_anchor)]) == 2
    err = capsys.readouterr().err
    assert "--drop-groups-without-anchor drops them" in err and "data.drop_groups_without_anchor" not in err
    assert main(["data", "check", str(no_anchor), "--drop-groups-without-anchor"]) == 0
    pref = write_jsonl(tmp_path / "pref.jsonl", parallel_records(2))
    assert main(["data", "check", str(pref), "--objective", "sft"]) == 2
    err = capsys.readouterr().err
    assert "use --objective dpo or orpo" in err and "objective.name" not in err


def test_a_trailing_comma_is_not_called_truncation_and_lone_carriage_returns_are_named(tmp_path):
    comma = tmp_path / "comma.jsonl"
    comma.write_text(lines(GOOD) + '{"group": "g0", "lang": "fr",}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records(comma, "dpo")
    assert "truncated" not in str(err.value)
    cr = tmp_path / "cr.jsonl"
    cr.write_bytes((json.dumps(GOOD) + "\r" + json.dumps(FR) + "\r").encode())
    with pytest.raises(DataError, match="carriage return alone"):
        load_records(cr, "dpo")


def test_parquet_is_recognised_by_its_signature_whatever_the_suffix(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("pairs.PARQUET", "pairs.pq", "pairs.data"):
        pq.write_table(pa.Table.from_pylist([GOOD, FR]), tmp_path / name)
        assert [r.lang for r in load_records(tmp_path / name, "dpo")[0]] == ["en", "fr"]
