"""RAG records: validation before any work, the prompt template, shots, chat rendering."""

from __future__ import annotations

import json

import pytest

from bcat.data.rag import (
    RagItem,
    build_prompts,
    chat_messages,
    instruction_table,
    load_items,
    read_wording_file,
    render_plain,
    select_shots,
    uses_chat_template,
    wordings_for,
)
from bcat.errors import BcatError, DataError

REQUIRED = ["en", "de", "es", "fr", "hi", "ja", "zh", "th", "vi", "hu", "ro", "ar"]


def rec(group="g1", lang="en", **kw):
    r = {"group": group, "lang": lang, "question": "How long is the warranty?",
         "passages": ["The warranty lasts 24 months.", "The battery lasts 10 hours."], "answers": ["24 months"]}
    r.update(kw)
    return r


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def test_instruction_table_covers_the_languages():
    table = instruction_table()
    for lang in REQUIRED:
        w = table[lang]
        assert "{n}" in w.passage and w.question and w.answer and len(w.instruction) > 10
    assert len({w.instruction for w in table.values()}) == len(table)  # every row really translated


def test_load_valid_file(tmp_path):
    path = write(tmp_path / "qa.jsonl", [rec(), rec(lang="fr", answers=["24 mois"], answer_neutral=False), "",
                                         rec("g2"), rec("g2", "fr", answers=["24 mois"]), rec(3, "en")])
    items = load_items(path)
    assert [(i.group, i.lang, i.line) for i in items] == [("g1", "en", 1), ("g1", "fr", 2), ("g2", "en", 4),
                                                         ("g2", "fr", 5), ("3", "en", 6)]
    assert items[0].passages[1] == "The battery lasts 10 hours."  # order kept
    assert [i.group for i in load_items(path, limit_groups=2)] == ["g1", "g1", "g2", "g2"]
    assert {i.lang for i in load_items(path, languages=["fr"])} == {"fr"}
    with pytest.raises(BcatError, match="de not in"):
        load_items(path, languages=["de"])


@pytest.mark.parametrize("bad, line, field, message", [
    (rec(answers=[]), 2, "answers", "must not be empty"),
    (rec(answers=["24", ""]), 2, "answers", "item 1"),
    (rec(answers="24 months"), 2, "answers", "list of strings"),
    (rec(passages=[]), 2, "passages", "must not be empty"),
    (rec(lang="xx"), 2, "lang", "unknown or malformed language code"),
    (rec(question=""), 2, "question", "must not be empty"),
    (rec(answer_neutral="yes"), 2, "answer_neutral", "true or false"),
    ({k: v for k, v in rec().items() if k != "question"}, 2, "question", "missing"),
    (rec(group=""), 2, "group", "non-empty"),
    (rec(group="g0"), 2, "lang", "already has"),
    (rec(answers=["24 months", "…"]), 2, "answers", "item 1 .* no letters or digits"),
    (rec(distractor_answers="12 months"), 2, "distractor_answers", "must be a list"),
    (rec(distractor_answers=["12 months", 12]), 2, "distractor_answers", "item 1 must be a string or a non-empty"),
    (rec(distractor_answers=[[]]), 2, "distractor_answers", "item 0 must be"),
    (rec(distractor_answers=[["12 months", "?"]]), 2, "distractor_answers", "item 0 '\\?' has no letters"),
    (rec(distractor_answers=[["12 months"], ["24 Months."]]), 2, "distractor_answers",
     "item 1 '24 Months.' is an accepted answer"),
    (rec(distractor_answer=["12 months"]), 2, "distractor_answer", "must be a string"),
    (rec(unsupported_answer="24 months"), 2, "unsupported_answer", "is an accepted answer"),
    ("{not json", 2, None, "not valid JSON"),
    ("[1, 2]", 2, None, "JSON object"),
])
def test_validation_names_file_line_field(tmp_path, bad, line, field, message):
    path = write(tmp_path / "qa.jsonl", [rec("g0"), bad, rec("g9")])
    with pytest.raises(DataError, match=message) as info:
        load_items(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    assert str(path) in str(info.value)


def test_wrong_values_are_collected_in_order(tmp_path):
    path = write(tmp_path / "qa.jsonl", [
        rec(distractor_answers=[["12 months", "12"], "36 months"], distractor_answer="12 months",
            unsupported_answer="30 months"),
        rec("g2", distractor_answer="12 months"),
        rec("g3")])
    items = load_items(path)
    assert items[0].candidates == (("12 months", "12"), ("36 months",), ("30 months",))
    assert items[1].candidates == (("12 months",),)
    assert not items[0].candidates_derived
    # no wrong values listed: the passages' values of the gold answer's shape (bcat.data.candidates)
    assert items[2].candidates == (("10",),) and items[2].candidates_derived


def test_region_and_script_tags_load_without_any_wording(tmp_path):
    """Loading (and so scoring) needs no prompt wording: any tag training accepts is accepted."""
    path = write(tmp_path / "qa.jsonl", [rec(lang="pt-BR", answers=["24 meses"]), rec(lang="zh-Hans", answers=["24"]),
                                         rec(lang="sw-KE")])
    assert [i.lang for i in load_items(path)] == ["pt-BR", "zh-Hans", "sw-KE"]


def test_wording_falls_back_to_the_language_subtag_and_says_so():
    choices, missing = wordings_for(["pt-BR", "zh-Hans", "fr", "sw-KE"])
    assert choices["pt-BR"].wording == instruction_table()["pt"]
    assert choices["pt-BR"].source == "bundled, by language subtag (pt)"
    assert choices["zh-Hans"].wording == instruction_table()["zh"] and choices["fr"].source == "bundled"
    assert missing == ["sw-KE"]


WORDING_FILE = ("# my wording\nlang\tpassage\tquestion\tanswer\tinstruction\n"
                "sw\tpassage {n}:\tquestion:\tanswer:\tanswer it.\n"
                "pt-BR\tTrecho {n}:\tPergunta:\tResposta:\tResponda, por favor.\n")


def test_a_users_wording_file_adds_and_overrides_rows(tmp_path):
    (tmp_path / "w.tsv").write_text(WORDING_FILE, encoding="utf-8")
    user = read_wording_file(tmp_path / "w.tsv")
    choices, missing = wordings_for(["sw-KE", "pt-BR", "pt-PT", "fr"], user, str(tmp_path / "w.tsv"))
    assert not missing and choices["sw-KE"].source == f"{tmp_path / 'w.tsv'}, by language subtag (sw)"
    assert choices["pt-BR"].wording.instruction == "Responda, por favor."
    assert choices["pt-PT"].source == "bundled, by language subtag (pt)" and choices["fr"].source == "bundled"
    item = RagItem("g", "sw-KE", "q?", ("p",), ("a",))
    assert render_plain(item, wording=choices["sw-KE"].wording).startswith("answer it.\n\npassage 1: p")


@pytest.mark.parametrize("text, line, field, message", [
    ("lang\tpassage\n", 1, None, "the header must be"),
    ("lang\tpassage\tquestion\tanswer\tinstruction\nfr\tP {n}\tQ\tA\n", 2, None, "4 tab-separated cells"),
    ("lang\tpassage\tquestion\tanswer\tinstruction\nfr\tP\tQ\tA\tI\n", 2, "passage", "must contain {n}"),
    ("lang\tpassage\tquestion\tanswer\tinstruction\nfr\tP {n}\t\tA\tI\n", 2, "question", "must not be empty"),
    ("lang\tpassage\tquestion\tanswer\tinstruction\nf r\tP {n}\tQ\tA\tI\n", 2, "lang", "malformed"),
])
def test_bad_wording_files_name_file_line_field(tmp_path, text, line, field, message):
    (tmp_path / "w.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_wording_file(tmp_path / "w.tsv")
    assert (info.value.line, info.value.field) == (line, field)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(BcatError, match="not found"):
        load_items(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no records"):
        load_items(write(tmp_path / "empty.jsonl", [""]))


ITEM_FR = RagItem("g1", "fr", "Combien de temps dure la garantie ?", ("La garantie dure 24 mois.",), ("24 mois",))
ITEM_JA = RagItem("g1", "ja", "保証期間はどのくらいですか？", ("保証期間は24か月です。", "電池は10時間もちます。"), ("24か月",))


def test_plain_prompt_is_in_the_query_language():
    text = render_plain(ITEM_FR)
    assert text.startswith(instruction_table()["fr"].instruction + "\n\n")
    assert "Passage 1 : La garantie dure 24 mois." in text
    assert text.endswith("Question : Combien de temps dure la garantie ?\nRéponse :")
    ja = render_plain(ITEM_JA)
    assert "文章1：保証期間は24か月です。\n文章2：電池は10時間もちます。" in ja and ja.endswith("答え：")


def test_shots_come_from_other_groups_of_the_same_language():
    items = [RagItem(f"g{i}", lang, f"q{i}?", (f"p{i}",), (f"a{i}",)) for i in range(5) for lang in ("en", "fr")]
    shots = select_shots(items, 2, seed=0)
    for item in items:
        chosen = shots[(item.group, item.lang)]
        assert len(chosen) == 2 and all(s.lang == item.lang and s.group != item.group for s in chosen)
    # parallel: the same groups are chosen as shots in every language
    assert [s.group for s in shots[("g3", "en")]] == [s.group for s in shots[("g3", "fr")]]
    text = render_plain(items[0], shots[("g0", "en")])
    assert text.count(instruction_table()["en"].instruction) == 1 and text.count("Answer:") == 3
    first = shots[("g0", "en")][0]
    assert f"Answer: {first.answers[0]}\n\n" in text
    assert select_shots(items, 0)[("g0", "en")] == []


class ChatTok:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_chat_prompts(tiny_chat_model_dir):
    messages = chat_messages(ITEM_FR, [ITEM_FR])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and messages[1]["content"] == "24 mois"
    assert not messages[2]["content"].endswith("Réponse :")  # the assistant turn is the answer
    prompt = build_prompts([ITEM_FR], ChatTok(), chat=True)[0]
    assert prompt.startswith("<user>") and prompt.endswith("<assistant>")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    prompt = build_prompts([ITEM_FR], tok, chat=True)[0]
    assert prompt.startswith("<s><|user|>") and prompt.endswith("<|assistant|>")


def test_chat_template_modes():
    class Plain:
        chat_template = None

    assert uses_chat_template(ChatTok(), "auto") and uses_chat_template(ChatTok(), "on")
    assert not uses_chat_template(ChatTok(), "off") and not uses_chat_template(Plain(), "auto")
    with pytest.raises(BcatError, match="no chat template"):
        uses_chat_template(Plain(), "on")


def test_a_blank_group_id_and_an_upper_case_language_are_refused(tmp_path):
    with pytest.raises(DataError, match="group") as err:
        load_items(write(tmp_path / "blank.jsonl", [rec("  "), rec("  ", "fr")]))
    assert err.value.line == 1
    with pytest.raises(DataError, match="is written 'fr'") as err:
        load_items(write(tmp_path / "upper.jsonl", [rec(), rec(lang="FR")]))
    assert (err.value.line, err.value.field) == (2, "lang")


def test_a_datasets_directory_of_evaluation_records_loads(tmp_path):
    import datasets

    datasets.Dataset.from_list([rec(), rec(lang="fr", answers=["24 mois"])]).save_to_disk(str(tmp_path / "qa"))
    assert [i.lang for i in load_items(tmp_path / "qa")] == ["en", "fr"]
