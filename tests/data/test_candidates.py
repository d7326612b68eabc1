"""Wrong values derived from the passages of a plain (question, passages, answers) record: the two
attacks that the contains rule lets through score 0, the short correct answer still scores 1."""

from __future__ import annotations

import pytest

from bcat.data.candidates import derive_candidates, fillers_by_language
from bcat.data.normalize import judge
from bcat.data.rag import RagItem, with_derived_candidates

CASES = [  # question, passages, accepted answers, a wrong value from the passages
    ("When does the Lisbon store close?", ["The Lisbon store opens at 9:30 and closes at 18:00.",
                                           "The Porto store closes at 19:00."], ["18:00"], "19:00"),
    ("How much is the Pro plan?", ["The Basic plan costs $12.50 a month.", "The Pro plan costs $29.90 a month."],
     ["$29.90", "29.90"], "$12.50"),
    ("When was the contract signed?", ["The contract was signed on 2021-04-03.", "It was renewed on 2023-04-03."],
     ["2021-04-03"], "2023-04-03"),
    ("Which part number fits the X2 drill?", ["Part KT-2450 fits the X2 drill.", "Part KT-2460 fits the X3 drill."],
     ["KT-2450"], "KT-2460"),
    ("Who is the chief financial officer?", ["Our chief executive is Maria Silva.",
                                             "The chief financial officer, John Park, joined in May."],
     ["John Park"], "Maria Silva"),
]


@pytest.mark.parametrize("question, passages, answers, wrong", CASES)
def test_plain_records_cannot_be_gamed(question, passages, answers, wrong):
    candidates = derive_candidates(question, answers, passages, {})
    assert judge(answers[0], answers, candidates).strict  # the short correct answer
    assert judge(f"{answers[0]}.", answers, candidates).strict
    assert not judge(" ".join(passages), answers, candidates).strict  # copying every passage
    assert judge(" ".join(passages), answers, ()).strict  # (what the contains rule gives)
    for line in (f"{answers[0]} or {wrong}", f"{wrong}, {answers[0]}"):  # gold next to a wrong value
        assert not judge(line, answers, candidates).strict, line


def test_template_words_are_stripped_from_names_in_unspaced_scripts():
    """Chinese and Thai names: the words around a value are shared by many clauses of the file."""
    zh = [RagItem(f"g{n}", "zh", "KJ-1的电话支持以哪种语言提供？", (f"电话支持以{a}提供。", f"电话支持以{b}提供。"), (a,))
          for n, (a, b) in enumerate([("英语", "法语"), ("德语", "俄语"), ("阿拉伯语", "韩语"), ("日语", "希腊语")])]
    items = with_derived_candidates(zh)
    assert all(i.candidates_derived for i in items)
    assert not judge("阿拉伯语 / 韩语", ["阿拉伯语"], items[2].candidates).strict
    assert judge("阿拉伯语", ["阿拉伯语"], items[2].candidates).strict
    th = [RagItem(f"g{n}", "th", "q", (f"รุ่น A-{n} คือภาษา{a}", f"รุ่น B-{n} คือภาษา{b}"), (a,))
          for n, (a, b) in enumerate([("อังกฤษ", "ฝรั่งเศส"), ("จีน", "กรีก"), ("สเปน", "อาหรับ"), ("ยูเครน", "รัสเซีย")])]
    fillers = fillers_by_language(th)["th"]
    assert "ฝรั่งเศส" in fillers["คือภาษาฝรั่งเศส"]
    item = with_derived_candidates(th)[0]
    assert not judge("อังกฤษ ฝรั่งเศส", item.answers, item.candidates).strict
    assert judge("อังกฤษ", item.answers, item.candidates).strict


def test_listed_wrong_values_are_kept_as_they_are():
    item = RagItem("g", "en", "q", ("It lasts 24 months, not 12.",), ("24 months",), candidates=(("36 months",),))
    assert with_derived_candidates([item]) == [item]
