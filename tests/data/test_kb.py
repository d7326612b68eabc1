"""The bundled multilingual controlled-RAG data (bcat.data.kb): templates, generator, splits, pairs."""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from babel import Locale
from babel.dates import get_day_names, get_month_names

from bcat.data.kb.build import (
    SPLITS,
    build,
    default_output_dir,
    quotas,
    split_records,
    udhr_articles,
)
from bcat.data.kb.checks import record_problems
from bcat.data.kb.matching import mentions, same_answer
from bcat.data.kb.pairs import (
    assign_pair_types,
    language_possible,
    make_pairs,
    make_sft,
    parse_mix,
)
from bcat.data.kb.products import LARGER_WINS, draw_spec, product_item
from bcat.data.kb.prompt import answer_separator, render_prompt
from bcat.data.kb.templates import (
    ATTRIBUTES,
    MIN_PARAPHRASES,
    NUMBER_ATTRIBUTES,
    load_templates,
    parse_templates,
)
from bcat.data.kb.values import render_value
from bcat.errors import DataError
from bcat.languages import LANGUAGES, SEEN, UNSEEN

BUNDLED = default_output_dir()


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def bundled() -> dict[str, list[dict]]:
    return {split: _read(BUNDLED / f"{split}.jsonl") for split in SPLITS}


@pytest.fixture(scope="module")
def all_records(bundled) -> list[dict]:
    return [r for records in bundled.values() for r in records]


def _groups(records):
    out = defaultdict(list)
    for r in records:
        out[r["group"]].append(r)
    return out


# --- templates ------------------------------------------------------------------------------------

def test_languages_are_english_six_seen_four_unseen():
    assert LANGUAGES[0] == "en" and SEEN == ("de", "es", "fr", "hi", "ja", "zh") and UNSEEN == ("th", "vi", "hu", "ro")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_templates_load_with_enough_paraphrases(lang):
    t = load_templates(lang)
    assert len(t.headers) >= MIN_PARAPHRASES and len(t.udhr_questions) >= MIN_PARAPHRASES
    for table in (t.facts, t.questions, t.which_model, t.compare):
        assert all(len(lines) >= MIN_PARAPHRASES for lines in table.values())
        assert all(len(set(lines)) == len(lines) for lines in table.values())  # paraphrases, not copies
    assert set(t.facts) == set(ATTRIBUTES) and set(t.compare) == set(NUMBER_ATTRIBUTES)


def _all_lines(t):
    yield from t.headers
    for table in (t.facts, t.questions, t.which_model, t.compare):
        for lines in table.values():
            yield from lines
    yield from t.udhr_questions


@pytest.mark.parametrize("lang", ["ja", "zh"])
def test_japanese_and_chinese_templates_have_no_spaces(lang):
    t = load_templates(lang)
    assert t.joiner == ""
    assert not [line for line in _all_lines(t) if " " in line]


def test_script_specific_conventions():
    hi = load_templates("hi")
    assert all(line.endswith("।") for lines in hi.facts.values() for line in lines)
    assert all(re.search("[\u0900-\u097f]", line) for line in _all_lines(hi))
    th = load_templates("th")
    assert not [line for line in _all_lines(th) if line.endswith("?")]
    assert render_value("ja", "warranty", 24).text == "24か月"
    assert render_value("zh", "warranty", 24).text == "24个月"
    assert render_value("th", "battery", 12).text == "12 ชั่วโมง"
    assert [render_value("ro", "warranty", n).text for n in (12, 24)] == ["12 luni", "24 de luni"]
    assert render_value("hu", "warranty", 24).text == "24 hónap"  # singular after a numeral


def test_template_errors_name_the_line():
    text = (BUNDLED / "templates" / "en.yaml").read_text(encoding="utf-8")
    with pytest.raises(DataError, match=r"compare\.price\[0\].*lacks \['b'\]"):
        parse_templates("en", text.replace("Which of {a} and {b} is cheaper?", "Which of {a} is cheaper?"))
    with pytest.raises(DataError, match="unknown placeholders"):
        parse_templates("en", text.replace("Weight: {value}.", "Weight: {value} {unit}."))


# --- generator -----------------------------------------------------------------------------------

def test_build_is_deterministic_and_equals_the_bundled_files(tmp_path):
    first = build(tmp_path / "a", seed=0)
    second = build(tmp_path / "b", seed=0)
    for split in SPLITS:
        data = first[split].read_bytes()
        assert data == second[split].read_bytes()
        assert data == (BUNDLED / f"{split}.jsonl").read_bytes(), f"{split}.jsonl is stale: run `bcat data build`"
    total = sum((BUNDLED / f"{s}.jsonl").stat().st_size for s in SPLITS)
    assert total < 15_000_000


def test_seed_changes_the_data():
    assert split_records("dev", seed=1)[0] != split_records("dev", seed=0)[0]


def test_splits_are_disjoint_by_group_and_large_enough(bundled):
    groups = {split: {r["group"] for r in records} for split, records in bundled.items()}
    assert len(groups["train"]) >= 400 and len(groups["dev"]) == 50 and len(groups["test"]) >= 150
    assert not groups["train"] & groups["dev"] and not groups["train"] & groups["test"]
    assert not groups["dev"] & groups["test"]
    articles = udhr_articles(0)
    assert not set(articles["train"]) & set(articles["test"]) and not set(articles["dev"]) & set(articles["test"])
    answered = {split: {int(r["answers"][1]) for r in recs if r["source"] == "udhr"} for split, recs in bundled.items()}
    assert not answered["train"] & answered["test"] and not answered["dev"] & answered["test"]


def test_every_group_is_complete_and_parallel(all_records):
    for group, records in _groups(all_records).items():
        assert [r["lang"] for r in records] == list(LANGUAGES), group
        for key in ("kind", "attribute", "gold_index", "evidence", "answer_en", "answer_neutral", "source"):
            assert len({json.dumps(r[key]) for r in records}) == 1, (group, key)
        assert len({len(r["passages"]) for r in records}) == 1
        # one wrong value per other passage, in passage order, in every language (answer ids align)
        assert {len(r["distractor_answers"]) for r in records} == {len(records[0]["passages"]) - 1}
        if records[0]["kind"] in ("which_model", "compare"):
            assert len({json.dumps(r["distractor_answers"]) for r in records}) == 1  # model codes


def test_every_record_passes_the_checks(all_records):
    bad = [(r["group"], r["lang"], p) for r in all_records for p in record_problems(r)]
    assert not bad, bad[:5]


def test_items_are_hard(all_records):
    en = [r for r in all_records if r["lang"] == "en"]
    assert {len(r["passages"]) for r in en} == {3, 4, 5}
    kinds = Counter(r["kind"] for r in en)
    assert set(kinds) == {"number", "name", "which_model", "compare", "article"}
    assert len({r["gold_index"] for r in en}) == 5  # the gold passage is not always first
    localized = sum(not r["answer_neutral"] for r in en) / len(en)
    assert 0.2 < localized < 0.5


def test_every_kind_asks_about_every_attribute_evenly(bundled):
    # The generator redraws items that fail the checks; it must not skew what is asked.
    from bcat.data.kb.products import KINDS, attributes_of

    en = [r for r in bundled["train"] if r["lang"] == "en" and r["source"] == "kb"]
    for kind in KINDS:
        counts = Counter(r["attribute"] for r in en if r["kind"] == kind)
        assert set(counts) == set(attributes_of(kind))
        assert max(counts.values()) - min(counts.values()) <= 1


def test_record_problems_catch_a_leaked_answer(bundled):
    rec = dict(next(r for r in bundled["dev"] if r["kind"] == "number"))
    other = 1 - rec["gold_index"] if rec["gold_index"] < 2 else 0
    rec["passages"] = list(rec["passages"])
    rec["passages"][other] += " " + rec["answers"][0]
    assert any("also in a distractor" in p for p in record_problems(rec))


def test_wrong_values_are_every_other_passages_value(bundled):
    for r in bundled["dev"]:
        others = [p for i, p in enumerate(r["passages"]) if i != r["gold_index"]]
        for passage, forms in zip(others, r["distractor_answers"]):
            assert all(mentions(passage, f) for f in forms), (r["group"], r["lang"], forms)
        if r["kind"] == "compare":  # the other option of the comparison is one of them
            assert [r["distractor_answer"]] in r["distractor_answers"]


def test_record_problems_catch_bad_wrong_values(bundled):
    rec = dict(next(r for r in bundled["dev"] if r["kind"] == "number" and r["lang"] == "de"))
    assert not record_problems(rec)
    gold_as_wrong = {**rec, "distractor_answers": [*rec["distractor_answers"], list(rec["answers"])]}
    assert any("is an accepted answer" in p for p in record_problems(gold_as_wrong))
    absent = {**rec, "distractor_answers": [*rec["distractor_answers"], ["999 Monate"]]}
    assert any("not in a distractor passage" in p for p in record_problems(absent))
    missing = {**rec, "distractor_answers": [f for f in rec["distractor_answers"] if f[0] != rec["distractor_answer"]]}
    assert any("not among distractor_answers" in p for p in record_problems(missing))


def test_compare_and_which_model_answers_are_right():
    rng = random.Random(7)
    for _ in range(100):
        spec = draw_spec("compare", rng.choice(NUMBER_ATTRIBUTES), rng)
        gold, wrong = spec.products[spec.gold], spec.products[spec.wrong]
        a, b = gold.values[spec.attribute], wrong.values[spec.attribute]
        assert a != b and (a > b) == LARGER_WINS[spec.attribute]
        if spec.attribute == "price":
            assert len({p.currency for p in spec.products}) == 1  # only one currency compares
    records = product_item("g", "which_model", "weight", random.Random(3))
    en = records[0]
    value = re.search(r"\d+", en["question"]).group()
    assert mentions(en["passages"][en["gold_index"]], value)


def _cldr(lang, attribute, code):
    loc = Locale.parse(lang)
    name = {
        "country": lambda: loc.territories[code],
        "language": lambda: loc.languages[code],
        "currency": lambda: loc.currencies[code],
        "delivery_day": lambda: get_day_names("wide", locale=loc)[code],
        "launch_month": lambda: get_month_names("wide", locale=loc)[code],
    }[attribute]()
    return name.replace("\u00a0", " ")


def test_localized_names_come_from_babel(all_records):
    assert render_value("fr", "country", "DE").text == "Allemagne"
    assert render_value("ja", "language", "en").text == "英語"
    assert render_value("de", "delivery_day", 0).text == "Montag"
    assert render_value("hu", "launch_month", 3).text == "március"
    assert render_value("zh", "currency", "USD").text == "美元"
    # Every name answer in the data is CLDR's name of the English answer's code.
    codes = {
        "country": list(Locale.parse("en").territories), "language": list(Locale.parse("en").languages),
        "currency": list(Locale.parse("en").currencies), "delivery_day": list(range(7)),
        "launch_month": list(range(1, 13)),
    }
    reverse = {a: {_cldr("en", a, c): c for c in cs} for a, cs in codes.items()}
    checked = 0
    for r in all_records:
        if r["kind"] == "name":
            code = reverse[r["attribute"]][r["answer_en"]]
            assert r["answers"][0] == _cldr(r["lang"], r["attribute"], code)
            checked += 1
    assert checked > 1000


def test_udhr_questions_quote_the_gold_article_exactly(all_records):
    for r in all_records:
        if r["source"] != "udhr":
            continue
        span = re.search(r"[“„«「](.+)[”“»」]", r["question"]).group(1).strip()
        assert span in r["passages"][r["gold_index"]], (r["group"], r["lang"])
        assert not any(mentions(p, span) for i, p in enumerate(r["passages"]) if i != r["gold_index"])
        assert r["answers"][1] == r["answer_en"].split()[-1]


# --- prompt and pairs ------------------------------------------------------------------------------

def test_render_prompt_is_the_evaluation_prompt(bundled):
    from bcat.data.rag import RagItem, render_block

    rec = next(r for r in bundled["dev"] if r["lang"] == "ja")
    item = RagItem(rec["group"], "ja", rec["question"], tuple(rec["passages"]), tuple(rec["answers"]))
    assert render_prompt(rec) == render_block(item)
    assert render_prompt(rec).endswith("答え：") and answer_separator("ja") == ""
    assert answer_separator("de") == " "


@pytest.fixture(scope="module")
def dev(bundled):
    return bundled["dev"]


def test_pairs_basic_properties(dev):
    pairs = make_pairs(dev)
    assert len(pairs) == len(dev)
    by_key = {(r["group"], r["lang"]): r for r in dev}
    for p in pairs:
        rec = by_key[(p["group"], p["lang"])]
        sep = answer_separator(p["lang"])
        assert p["chosen"] == sep + rec["answers"][0] and p["chosen"] != p["rejected"]
        assert p["prompt"] == render_prompt(rec)
        wrong = p["rejected"][len(sep):]
        if p["pair_type"] == "language":
            assert wrong == rec["answer_en"] and p["lang"] != "en"
        elif p["pair_type"] == "grounding":
            assert wrong == rec["distractor_answer"]
            assert any(mentions(x, wrong) for i, x in enumerate(rec["passages"]) if i != rec["gold_index"])
        else:
            assert wrong == rec["unsupported_answer"] and not any(mentions(x, wrong) for x in rec["passages"])


def test_pair_types_follow_the_mix_and_stay_parallel(bundled):
    records = bundled["train"]
    for only in ("grounding", "hallucination"):
        assert {p["pair_type"] for p in make_pairs(records, parse_mix(f"{only}=1"))} == {only}
    pairs = make_pairs(records, parse_mix("grounding=0.5,language=0.25,hallucination=0.25"), seed=3)
    per_group = defaultdict(set)
    for p in pairs:
        if p["lang"] != "en":
            per_group[p["group"]].add(p["pair_type"])
    assert all(len(types) == 1 for types in per_group.values())  # parallel across languages
    counts = Counter(next(iter(t)) for t in per_group.values())
    assert counts == quotas(len(per_group), {"grounding": 0.5, "language": 0.25, "hallucination": 0.25})
    assert all(p["pair_type"] != "language" for p in pairs if p["lang"] == "en")
    # Only "language": every group that can take it does; the others (and English) fall back.
    lang_only = make_pairs(records, parse_mix("language=1"))
    groups = _groups(records)
    for p in lang_only:
        possible = language_possible(groups[p["group"]]) and p["lang"] != "en"
        assert (p["pair_type"] == "language") == possible


def test_language_pairs_need_a_different_answer_in_every_language(bundled):
    groups = _groups(bundled["train"])
    types = assign_pair_types(groups, parse_mix("language=1"))
    for group, t in types.items():
        if t == "language":
            for r in groups[group]:
                assert r["lang"] == "en" or not same_answer(r["answers"][0], r["answer_en"])
    udhr = next(g for g in groups if g.startswith("udhr"))
    assert not language_possible(groups[udhr])  # French "Article 12" is the English label


def test_pairs_are_deterministic(dev):
    assert make_pairs(dev, seed=5) == make_pairs(dev, seed=5)
    a = [p["pair_type"] for p in make_pairs(dev, seed=5)]
    b = [p["pair_type"] for p in make_pairs(dev, seed=6)]
    assert a != b


def test_sft_records(dev):
    sft = make_sft(dev)
    assert all(s["completion"] == answer_separator(s["lang"]) + r["answers"][0] for s, r in zip(sft, dev))
    assert all("chosen" not in s for s in sft)


def _kb_cli(argv):
    """Run ``bcat data <argv>`` through bcat.cli.data alone (the full router imports torch)."""
    import argparse

    from bcat.cli import data as cli

    parser = argparse.ArgumentParser(prog="bcat data")
    cli.add_cli(parser.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_pairs_and_errors(tmp_path):
    from bcat.data.records import load_records
    from bcat.errors import ConfigError

    out = tmp_path / "pairs.jsonl"
    assert _kb_cli(["pairs", "--input", str(BUNDLED / "dev.jsonl"), "--output", str(out), "--seed", "1"]) == 0
    records, report = load_records(out, "dpo")
    assert report.groups == 50 and report.groups_missing_languages == 0
    sft = tmp_path / "sft.jsonl"
    assert _kb_cli(["pairs", "--input", str(BUNDLED / "dev.jsonl"), "--output", str(sft), "--sft"]) == 0
    assert load_records(sft, "sft")[1].records == len(_read(BUNDLED / "dev.jsonl"))
    with pytest.raises(ConfigError, match="--mix"):
        _kb_cli(["pairs", "--input", str(BUNDLED / "dev.jsonl"), "--output", str(out), "--mix", "x=1"])
    with pytest.raises(DataError, match="file not found"):
        _kb_cli(["pairs", "--input", str(tmp_path / "missing.jsonl"), "--output", str(out)])
    # --groups: whole groups (every language), the same draw for the same seed, another for another seed
    sub = [tmp_path / f"sub{i}.jsonl" for i in range(3)]
    for path, seed in zip(sub, ("1", "1", "2")):
        assert _kb_cli(["pairs", "--input", str(BUNDLED / "dev.jsonl"), "--output", str(path), "--seed", seed,
                        "--groups", "12"]) == 0
    records, report = load_records(sub[0], "dpo")
    assert report.groups == 12 and report.groups_missing_languages == 0 and len(records) == 12 * 11
    assert sub[0].read_text() == sub[1].read_text() != sub[2].read_text()
    with pytest.raises(ConfigError, match="--groups: must be between 1 and the 50 groups"):
        _kb_cli(["pairs", "--input", str(BUNDLED / "dev.jsonl"), "--output", str(out), "--groups", "51"])


def test_cli_build(tmp_path, monkeypatch):
    import bcat.cli.data as cli

    calls = []
    monkeypatch.setattr(cli, "build", lambda out, seed: calls.append((out, seed)) or {})
    assert _kb_cli(["build", "--output", str(tmp_path), "--seed", "2"]) == 0
    assert calls == [(tmp_path, 2)]
    assert _kb_cli(["build"]) == 0 and calls[-1] == (None, 0)  # None: the package's resources
